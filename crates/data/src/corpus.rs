//! Finding and reading input documents: `.txt` files are one document each, `.jsonl` files hold one
//! document per line as `{"text": "..."}`. Files are visited in sorted path order so every machine
//! sees the same stream.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// The demo corpus `scripts/setup` installs: `$TEMPLAR_CACHE/corpus/text`, by default under
/// `~/.cache/templar` (what `templar localnet` and the convergence study read unless told).
pub fn demo_corpus_dir() -> PathBuf {
    let cache = std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/templar")))
        .unwrap_or_else(|| PathBuf::from(".cache/templar"));
    cache.join("corpus/text")
}

/// An input file and the path that identifies it inside the input folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub relative: String,
}

/// All `.txt` and `.jsonl` files under `dir`, recursively, sorted by relative path.
pub fn input_files(dir: &Path) -> Result<Vec<InputFile>, DataError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    if files.is_empty() {
        return Err(DataError::NoInput {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<InputFile>) -> Result<(), DataError> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if file_type.is_dir() {
            collect(root, &path, files)?;
        } else if is_input(&path) {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            files.push(InputFile { path, relative });
        }
    }
    Ok(())
}

fn is_input(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("txt" | "jsonl")
    )
}

/// The documents of one file, in order. Empty documents are skipped.
pub fn read_documents(file: &InputFile) -> Result<Vec<String>, DataError> {
    let bytes = fs::read(&file.path).map_err(|e| DataError::io(&file.path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: file.path.clone(),
        reason: e.utf8_error().to_string(),
    })?;
    if file.path.extension().and_then(|e| e.to_str()) == Some("jsonl") {
        parse_jsonl(&file.path, &text)
    } else {
        Ok(if text.trim().is_empty() {
            Vec::new()
        } else {
            vec![text]
        })
    }
}

#[derive(serde::Deserialize)]
struct JsonDocument {
    text: String,
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<String>, DataError> {
    let mut documents = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let document: JsonDocument =
            serde_json::from_str(line).map_err(|e| DataError::BadJsonLine {
                path: path.to_path_buf(),
                line: index + 1,
                reason: e.to_string(),
            })?;
        if !document.text.trim().is_empty() {
            documents.push(document.text);
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_text_and_jsonl_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        fs::write(dir.path().join("b/one.txt"), "x").unwrap();
        fs::write(dir.path().join("a.jsonl"), "{\"text\":\"y\"}\n").unwrap();
        fs::write(dir.path().join("ignored.md"), "z").unwrap();
        let names: Vec<_> = input_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| f.relative)
            .collect();
        assert_eq!(names, vec!["a.jsonl", "b/one.txt"]);
    }

    #[test]
    fn bad_json_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.jsonl");
        fs::write(&path, "{\"text\":\"fine\"}\n\n{\"title\":\"no text\"}\n").unwrap();
        let file = InputFile {
            path,
            relative: "docs.jsonl".into(),
        };
        let error = read_documents(&file).unwrap_err().to_string();
        assert!(error.contains("docs.jsonl line 3"), "{error}");
    }

    #[test]
    fn empty_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            input_files(dir.path()),
            Err(DataError::NoInput { .. })
        ));
    }
}

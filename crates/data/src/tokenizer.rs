//! Tokenizers that work offline: raw bytes, the GPT-2 and cl100k BPE encodings (embedded in `tiktoken-rs`),
//! and any Hugging Face `tokenizer.json`.
//!
//! Every encoding also reports how many UTF-8 bytes of the original text each token covers, so that
//! bits per byte can be computed for any sample cut out of the token stream.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::DataError;

/// Which tokenizer to use, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSpec {
    /// One token per byte (0–255) plus an end-of-text token (256).
    Bytes,
    /// GPT-2's 50 257-token BPE (tiktoken's `r50k_base`).
    Gpt2,
    /// OpenAI's cl100k BPE.
    Cl100k,
    /// A Hugging Face `tokenizer.json` file.
    File(PathBuf),
}

impl FromStr for TokenizerSpec {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "bytes" => Self::Bytes,
            "gpt2" => Self::Gpt2,
            "cl100k" => Self::Cl100k,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes => f.write_str("bytes"),
            Self::Gpt2 => f.write_str("gpt2"),
            Self::Cl100k => f.write_str("cl100k"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Tokens of one document and the number of text bytes behind each token.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    /// `byte_counts[i]` is how many UTF-8 bytes of the document token `i` stands for; they sum to the
    /// document's length. The end-of-text token stands for no bytes.
    pub byte_counts: Vec<u32>,
}

enum Kind {
    Bytes,
    Bpe {
        bpe: &'static tiktoken_rs::CoreBPE,
        /// Bytes behind each rank, computed once from the vocabulary.
        token_lengths: Vec<u32>,
    },
    HuggingFace(Box<tokenizers::Tokenizer>),
}

/// A loaded tokenizer.
pub struct Tokenizer {
    kind: Kind,
    id: String,
    vocab_size: u32,
    end_of_text: u32,
}

const BYTES_END_OF_TEXT: u32 = 256;
/// Names under which Hugging Face tokenizers commonly keep their document separator.
const END_OF_TEXT_NAMES: [&str; 5] = [
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|eot_id|>",
];

impl Tokenizer {
    pub fn load(spec: &TokenizerSpec) -> Result<Self, DataError> {
        match spec {
            TokenizerSpec::Bytes => Ok(Self {
                kind: Kind::Bytes,
                id: "bytes".into(),
                vocab_size: BYTES_END_OF_TEXT + 1,
                end_of_text: BYTES_END_OF_TEXT,
            }),
            TokenizerSpec::Gpt2 => Ok(Self::bpe(
                "gpt2",
                tiktoken_rs::r50k_base_singleton(),
                50_256,
                50_257,
            )),
            TokenizerSpec::Cl100k => Ok(Self::bpe(
                "cl100k",
                tiktoken_rs::cl100k_base_singleton(),
                100_257,
                100_277,
            )),
            TokenizerSpec::File(path) => Self::hugging_face(path),
        }
    }

    fn bpe(
        id: &str,
        bpe: &'static tiktoken_rs::CoreBPE,
        end_of_text: u32,
        vocab_size: u32,
    ) -> Self {
        let token_lengths = (0..vocab_size)
            .map(|rank| {
                bpe.decode_bytes(&[rank])
                    .map_or(0, |bytes| bytes.len() as u32)
            })
            .collect();
        Self {
            kind: Kind::Bpe { bpe, token_lengths },
            id: id.into(),
            vocab_size,
            end_of_text,
        }
    }

    fn hugging_face(path: &Path) -> Result<Self, DataError> {
        let tokenizer =
            tokenizers::Tokenizer::from_file(path).map_err(|source| DataError::Tokenizer {
                path: path.to_path_buf(),
                reason: source.to_string(),
            })?;
        let end_of_text = END_OF_TEXT_NAMES
            .iter()
            .find_map(|name| tokenizer.token_to_id(name))
            .ok_or_else(|| DataError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!("it has none of the end-of-text tokens {END_OF_TEXT_NAMES:?}"),
            })?;
        let vocab_size = tokenizer.get_vocab_size(true) as u32;
        let bytes = std::fs::read(path).map_err(|source| DataError::io(path, source))?;
        Ok(Self {
            kind: Kind::HuggingFace(Box::new(tokenizer)),
            id: format!("hf:{}", blake3::hash(&bytes).to_hex()),
            vocab_size,
            end_of_text,
        })
    }

    /// Stable identifier recorded in manifests: `bytes`, `gpt2`, `cl100k` or `hf:<blake3 of tokenizer.json>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The token appended after every document.
    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// Encodes a document without interpreting special-token text inside it.
    pub fn encode(&self, text: &str) -> Result<Encoded, DataError> {
        match &self.kind {
            Kind::Bytes => Ok(Encoded {
                tokens: text.bytes().map(u32::from).collect(),
                byte_counts: vec![1; text.len()],
            }),
            Kind::Bpe { bpe, token_lengths } => {
                let tokens = bpe.encode_ordinary(text);
                let byte_counts = tokens.iter().map(|&t| token_lengths[t as usize]).collect();
                Ok(Encoded {
                    tokens,
                    byte_counts,
                })
            }
            Kind::HuggingFace(tokenizer) => {
                let encoding =
                    tokenizer
                        .encode(text, false)
                        .map_err(|source| DataError::Encode {
                            reason: source.to_string(),
                        })?;
                let byte_counts = byte_counts_from_offsets(encoding.get_offsets(), text.len());
                Ok(Encoded {
                    tokens: encoding.get_ids().to_vec(),
                    byte_counts,
                })
            }
        }
    }
}

/// Turns (possibly overlapping) byte offsets into per-token byte counts that sum to the text length:
/// each token owns the bytes between the previous token's end and its own end; the last token also
/// owns whatever trails it.
fn byte_counts_from_offsets(offsets: &[(usize, usize)], text_len: usize) -> Vec<u32> {
    let mut counts = Vec::with_capacity(offsets.len());
    let mut covered = 0usize;
    for &(_, end) in offsets {
        let end = end.min(text_len).max(covered);
        counts.push((end - covered) as u32);
        covered = end;
    }
    if let Some(last) = counts.last_mut() {
        *last += (text_len - covered) as u32;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_counts_one_byte_per_token() {
        let tokenizer = Tokenizer::load(&TokenizerSpec::Bytes).unwrap();
        let encoded = tokenizer.encode("hé").unwrap();
        assert_eq!(encoded.tokens, vec![104, 0xC3, 0xA9]);
        assert_eq!(encoded.byte_counts, vec![1, 1, 1]);
        assert_eq!(tokenizer.vocab_size(), 257);
    }

    #[test]
    fn gpt2_matches_known_ids_and_covers_every_byte() {
        let tokenizer = Tokenizer::load(&TokenizerSpec::Gpt2).unwrap();
        let text = "Hello world, it's Ishmael.";
        let encoded = tokenizer.encode(text).unwrap();
        // "Hello" = 15496 and " world" = 995 in GPT-2's vocabulary.
        assert_eq!(&encoded.tokens[..2], &[15496, 995]);
        assert_eq!(encoded.byte_counts.iter().sum::<u32>() as usize, text.len());
        assert_eq!(tokenizer.end_of_text(), 50_256);
    }

    #[test]
    fn special_token_text_is_encoded_as_plain_text() {
        let tokenizer = Tokenizer::load(&TokenizerSpec::Gpt2).unwrap();
        let encoded = tokenizer.encode("<|endoftext|>").unwrap();
        assert!(!encoded.tokens.contains(&50_256));
    }

    #[test]
    fn overlapping_offsets_still_sum_to_text_length() {
        // Two byte-fallback tokens sharing one character, then a token ending short of the text.
        let counts = byte_counts_from_offsets(&[(0, 2), (0, 2), (2, 5)], 6);
        assert_eq!(counts, vec![2, 0, 4]);
    }
}

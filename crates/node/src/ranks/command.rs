//! What rank 0 asks the other ranks of its node to do, and its bytes between them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use templar_codec::{IndexCoding, Payload, Schema, encode};
use templar_engine::Batch;

use super::follow::SavedBy;
use crate::error::NodeError;

/// Every operation that changes a replica or measures it, so that the ranks' replicas stay the
/// same bits and take part in the same collectives.
#[derive(Debug)]
pub enum Command {
    /// One inner step on this batch (each rank takes its share of the rows), at this position
    /// of the learning-rate schedule.
    Train {
        batch: WireBatch,
        schedule_step: u64,
    },
    /// The outer step ([`super::outer_step`]).
    OuterStep,
    /// Apply the aggregate of these encoded payloads, in this order.
    Apply(Records),
    /// Load the weights of this checkpoint folder (one machine: the ranks share its disk).
    Load(PathBuf),
    /// Back to the network's initial model.
    Reset,
    /// Take the last apply back ([`crate::replica::Replica::revert_last_apply`]).
    Revert,
    /// Write this rank's training state (moments, error feedback) into this folder.
    SaveState(PathBuf),
    /// Read this rank's training state from `dir`, saved as `saved` says.
    LoadState {
        dir: PathBuf,
        saved: SavedBy,
    },
    /// The encoded payloads a validator judges this window: every judged update is clipped
    /// against them ([`crate::replica::Replica::apply_one`]).
    Candidates(Records),
    /// Apply candidate `index` alone, scaled by `scale`, clipped to the first `reference`
    /// candidates' norms.
    ApplyOne {
        index: usize,
        reference: usize,
        scale: f32,
    },
    /// Live weights back to the base.
    Restore,
    /// Loss totals of this batch (each rank measures its share of the rows), standing for this
    /// many bytes of text.
    Evaluate(WireBatch, u64),
    Stop,
}

/// Encoded payloads as a command carries them: read in place from the message that brought them,
/// so that a rank holds their wire bytes once.
#[derive(Debug)]
pub struct Records {
    message: Vec<u8>,
    ranges: Vec<std::ops::Range<usize>>,
}

impl Records {
    /// Records made here (a test's, or a command round trip's).
    pub fn of(records: &[Vec<u8>]) -> Records {
        let mut message = Vec::new();
        write_records(&mut message, records.iter().map(Vec::as_slice));
        Records::read(message, 0).unwrap_or(Records {
            message: Vec::new(),
            ranges: Vec::new(),
        })
    }

    /// The length-prefixed records of `message` from byte `start` to its end; `None` if one is
    /// cut.
    fn read(message: Vec<u8>, start: usize) -> Option<Records> {
        let mut ranges = Vec::new();
        let mut at = start;
        while at < message.len() {
            let (len, _) = message.get(at..)?.split_first_chunk::<8>()?;
            let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
            let end = (at + 8)
                .checked_add(len)
                .filter(|&end| end <= message.len())?;
            ranges.push(at + 8..end);
            at = end;
        }
        Some(Records { message, ranges })
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ranges.iter().map(|r| &self.message[r.clone()])
    }
}

/// A batch as it crosses between ranks: its shape, token ids and labels.
#[derive(Debug)]
pub struct WireBatch {
    pub rows: usize,
    pub seq_len: usize,
    pub tokens: Vec<i64>,
    pub labels: Vec<i64>,
}

impl WireBatch {
    /// A batch that cannot be read here travels empty: rebuilding it fails on the other ranks,
    /// which end, and the node stops.
    pub fn of(batch: &Batch) -> WireBatch {
        let (tokens, labels) = batch.to_tokens().unwrap_or_default();
        WireBatch {
            rows: batch.rows(),
            seq_len: batch.seq_len(),
            tokens,
            labels,
        }
    }

    pub fn batch(&self, vocab: usize) -> Result<Batch, NodeError> {
        Ok(
            Batch::from_tokens(&self.tokens, self.rows, self.seq_len, vocab)
                .and_then(|b| b.with_labels(&self.labels))?,
        )
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&(self.seq_len as u64).to_le_bytes());
        for id in self.tokens.iter().chain(&self.labels) {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }

    fn read(rest: &mut &[u8]) -> Option<WireBatch> {
        let rows = usize::try_from(take_u64(rest)?).ok()?;
        let seq_len = usize::try_from(take_u64(rest)?).ok()?;
        let n = rows.checked_mul(seq_len)?;
        let bytes = rest.get(..n.checked_mul(16)?)?;
        *rest = &rest[bytes.len()..];
        let ids: Vec<i64> = bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        let (tokens, labels) = ids.split_at(n);
        Some(WireBatch {
            rows,
            seq_len,
            tokens: tokens.to_vec(),
            labels: labels.to_vec(),
        })
    }
}

const TRAIN: u8 = 0;
const OUTER_STEP: u8 = 1;
const APPLY: u8 = 2;
const LOAD: u8 = 3;
const RESET: u8 = 4;
const SAVE_STATE: u8 = 5;
const LOAD_STATE: u8 = 6;
/// How a state load's saver is told: one process, or ranks.
const SAVED_BY_ONE_PROCESS: u8 = 0;
const SAVED_BY_RANKS: u8 = 1;
const SAVED_BY_FULLY_SHARDED_RANKS: u8 = 2;
const STOP: u8 = 7;
const CANDIDATES: u8 = 8;
const APPLY_ONE: u8 = 9;
const RESTORE: u8 = 10;
const EVALUATE: u8 = 11;
const REVERT: u8 = 12;

/// The message of an apply command for `payloads`, each encoded straight into it: rank 0 holds
/// their wire bytes once more, not twice.
pub(crate) fn apply_message(
    schema: &Schema,
    payloads: &[&Payload],
    coding: IndexCoding,
) -> Vec<u8> {
    payloads_message(APPLY, schema, payloads, coding)
}

/// The message of a candidates command for `payloads` (see [`apply_message`]).
pub(crate) fn candidates_message(
    schema: &Schema,
    payloads: &[&Payload],
    coding: IndexCoding,
) -> Vec<u8> {
    payloads_message(CANDIDATES, schema, payloads, coding)
}

fn payloads_message(
    tag: u8,
    schema: &Schema,
    payloads: &[&Payload],
    coding: IndexCoding,
) -> Vec<u8> {
    let mut out = vec![tag];
    for payload in payloads {
        let record = encode(schema, payload, coding);
        out.extend_from_slice(&(record.len() as u64).to_le_bytes());
        out.extend_from_slice(&record);
    }
    out
}

impl Command {
    /// The command's name, for messages (its data can be large).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Train { .. } => "train",
            Command::OuterStep => "outer step",
            Command::Apply(_) => "apply",
            Command::Load(_) => "load",
            Command::Reset => "reset",
            Command::Revert => "revert",
            Command::SaveState(_) => "save state",
            Command::LoadState { .. } => "load state",
            Command::Candidates(_) => "candidates",
            Command::ApplyOne { .. } => "apply one",
            Command::Restore => "restore",
            Command::Evaluate(..) => "evaluate",
            Command::Stop => "stop",
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // The path's own bytes: a name that is not UTF-8 still names the same file.
        let path = |out: &mut Vec<u8>, dir: &PathBuf| {
            out.extend_from_slice(dir.as_os_str().as_bytes());
        };
        match self {
            Command::Train {
                batch,
                schedule_step,
            } => {
                out.push(TRAIN);
                out.extend_from_slice(&schedule_step.to_le_bytes());
                batch.write(&mut out);
            }
            Command::OuterStep => out.push(OUTER_STEP),
            Command::Apply(records) => {
                out.push(APPLY);
                write_records(&mut out, records.iter());
            }
            Command::Load(dir) => {
                out.push(LOAD);
                path(&mut out, dir);
            }
            Command::Reset => out.push(RESET),
            Command::Revert => out.push(REVERT),
            Command::SaveState(dir) => {
                out.push(SAVE_STATE);
                path(&mut out, dir);
            }
            Command::LoadState { dir, saved } => {
                out.push(LOAD_STATE);
                match saved {
                    SavedBy::OneProcess {
                        error_feedback_blake3,
                    } => {
                        out.push(SAVED_BY_ONE_PROCESS);
                        write_records(&mut out, [error_feedback_blake3.as_bytes()]);
                    }
                    SavedBy::Ranks(ranks) => {
                        out.push(SAVED_BY_RANKS);
                        out.extend_from_slice(&(*ranks as u64).to_le_bytes());
                    }
                    SavedBy::FullyShardedRanks(ranks) => {
                        out.push(SAVED_BY_FULLY_SHARDED_RANKS);
                        out.extend_from_slice(&(*ranks as u64).to_le_bytes());
                    }
                }
                path(&mut out, dir);
            }
            Command::Candidates(records) => {
                out.push(CANDIDATES);
                write_records(&mut out, records.iter());
            }
            Command::ApplyOne {
                index,
                reference,
                scale,
            } => {
                out.push(APPLY_ONE);
                out.extend_from_slice(&(*index as u64).to_le_bytes());
                out.extend_from_slice(&(*reference as u64).to_le_bytes());
                out.extend_from_slice(&scale.to_le_bytes());
            }
            Command::Restore => out.push(RESTORE),
            Command::Evaluate(batch, bytes) => {
                out.push(EVALUATE);
                out.extend_from_slice(&bytes.to_le_bytes());
                batch.write(&mut out);
            }
            Command::Stop => out.push(STOP),
        }
        out
    }

    /// Reads a command; payloads are decoded and checked by the caller, from the message itself.
    pub(crate) fn decode(message: Vec<u8>) -> Result<Command, NodeError> {
        let bad = |what: &str| NodeError::Ranks(format!("rank 0 sent {what}"));
        match message.first() {
            Some(&APPLY) => {
                return Records::read(message, 1)
                    .map(Command::Apply)
                    .ok_or_else(|| bad("a cut payload"));
            }
            Some(&CANDIDATES) => {
                return Records::read(message, 1)
                    .map(Command::Candidates)
                    .ok_or_else(|| bad("a cut payload"));
            }
            _ => {}
        }
        let (&tag, mut rest) = message
            .split_first()
            .ok_or_else(|| bad("an empty command"))?;
        let path = |rest: &[u8]| PathBuf::from(OsStr::from_bytes(rest));
        let command = match tag {
            TRAIN => {
                let (step, batch) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| bad("a cut schedule step"))?;
                rest = batch;
                Command::Train {
                    schedule_step: u64::from_le_bytes(*step),
                    batch: WireBatch::read(&mut rest).ok_or_else(|| bad("a cut batch"))?,
                }
            }
            OUTER_STEP => Command::OuterStep,

            LOAD => return Ok(Command::Load(path(rest))),
            RESET => Command::Reset,
            REVERT => Command::Revert,
            SAVE_STATE => return Ok(Command::SaveState(path(rest))),
            LOAD_STATE => {
                let (&kind, tail) = rest.split_first().ok_or_else(|| bad("a cut state load"))?;
                rest = tail;
                let saved = match kind {
                    SAVED_BY_ONE_PROCESS => {
                        let digest =
                            super::take_record(&mut rest).ok_or_else(|| bad("a cut digest"))?;
                        SavedBy::OneProcess {
                            error_feedback_blake3: String::from_utf8(digest.to_vec())
                                .map_err(|_| bad("a digest that is not text"))?,
                        }
                    }
                    SAVED_BY_RANKS | SAVED_BY_FULLY_SHARDED_RANKS => {
                        let ranks = take_u64(&mut rest).ok_or_else(|| bad("a cut rank count"))?;
                        let ranks =
                            usize::try_from(ranks).map_err(|_| bad("a rank count out of range"))?;
                        if kind == SAVED_BY_RANKS {
                            SavedBy::Ranks(ranks)
                        } else {
                            SavedBy::FullyShardedRanks(ranks)
                        }
                    }
                    _ => return Err(bad("a state load of an unknown kind")),
                };
                return Ok(Command::LoadState {
                    saved,
                    dir: path(rest),
                });
            }

            APPLY_ONE => {
                let index = take_u64(&mut rest).ok_or_else(|| bad("a cut index"))?;
                let reference = take_u64(&mut rest).ok_or_else(|| bad("a cut reference"))?;
                let (scale, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| bad("a cut scale"))?;
                rest = tail;
                let count = |n: u64| usize::try_from(n).map_err(|_| bad("an index out of range"));
                Command::ApplyOne {
                    index: count(index)?,
                    reference: count(reference)?,
                    scale: f32::from_le_bytes(*scale),
                }
            }
            RESTORE => Command::Restore,
            EVALUATE => {
                let bytes = take_u64(&mut rest).ok_or_else(|| bad("a cut byte count"))?;
                let batch = WireBatch::read(&mut rest).ok_or_else(|| bad("a cut batch"))?;
                Command::Evaluate(batch, bytes)
            }
            STOP => Command::Stop,
            other => return Err(bad(&format!("an unknown command {other}"))),
        };
        if !rest.is_empty() {
            return Err(bad("a command with bytes left over"));
        }
        Ok(command)
    }
}

fn write_records<'a>(out: &mut Vec<u8>, records: impl IntoIterator<Item = &'a [u8]>) {
    for record in records {
        out.extend_from_slice(&(record.len() as u64).to_le_bytes());
        out.extend_from_slice(record);
    }
}

fn take_u64(cursor: &mut &[u8]) -> Option<u64> {
    let (value, rest) = cursor.split_first_chunk::<8>()?;
    *cursor = rest;
    Some(u64::from_le_bytes(*value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(command: Command) -> Command {
        Command::decode(command.encode()).unwrap()
    }

    #[test]
    fn commands_cross_unchanged_and_cut_ones_are_refused() {
        let batch = WireBatch {
            rows: 2,
            seq_len: 3,
            tokens: vec![1, 2, 3, 4, 5, 6],
            labels: vec![1, -100, 3, 4, 5, -100],
        };
        let Command::Evaluate(back, 77) = round_trip(Command::Evaluate(batch, 77)) else {
            panic!("not an evaluation");
        };
        assert_eq!((back.rows, back.seq_len), (2, 3));
        assert_eq!(back.labels, vec![1, -100, 3, 4, 5, -100]);
        let Command::ApplyOne {
            index: 3,
            reference: 2,
            scale,
        } = round_trip(Command::ApplyOne {
            index: 3,
            reference: 2,
            scale: 0.25,
        })
        else {
            panic!("not apply-one");
        };
        assert_eq!(scale, 0.25);
        let Command::Candidates(records) = round_trip(Command::Candidates(Records::of(&[
            b"ab".to_vec(),
            Vec::new(),
        ]))) else {
            panic!("not candidates");
        };
        assert_eq!(records.iter().collect::<Vec<_>>(), vec![&b"ab"[..], b""]);
        let mut cut = Command::Apply(Records::of(&[b"abc".to_vec()])).encode();
        cut.pop();
        assert!(Command::decode(cut).is_err());
        assert!(matches!(round_trip(Command::Revert), Command::Revert));
        let Command::Load(dir) = round_trip(Command::Load("/state/gen-1".into())) else {
            panic!("not a load");
        };
        assert_eq!(dir, PathBuf::from("/state/gen-1"));
        for saved in [
            SavedBy::Ranks(4),
            SavedBy::FullyShardedRanks(3),
            SavedBy::OneProcess {
                error_feedback_blake3: "ab12".into(),
            },
        ] {
            let Command::LoadState { dir, saved: back } = round_trip(Command::LoadState {
                dir: "/state/gen-2".into(),
                saved: saved.clone(),
            }) else {
                panic!("not a state load");
            };
            assert_eq!((dir, back), (PathBuf::from("/state/gen-2"), saved));
        }

        let train = Command::Train {
            batch: WireBatch {
                rows: 1,
                seq_len: 2,
                tokens: vec![1, 2],
                labels: vec![1, 2],
            },
            schedule_step: 1_234,
        };
        let Ok(Command::Train { schedule_step, .. }) = Command::decode(train.encode()) else {
            panic!("not a train command");
        };
        assert_eq!(schedule_step, 1_234);
        let mut cut = train.encode();
        cut.pop();
        assert!(Command::decode(cut).is_err());
        assert!(Command::decode(vec![RESTORE, 0]).is_err());
        assert!(Command::decode(vec![200]).is_err());
        assert!(Command::decode(Vec::new()).is_err());
    }
}

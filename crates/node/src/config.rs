//! `network.toml`: everything every node of one network must agree on. Its digest goes into the
//! network id that every envelope carries, so a node running a different file is told at the
//! first object it reads instead of silently training another model.

use std::path::Path;

use serde::{Deserialize, Serialize};
use templar_codec::CodecConfig;
use templar_engine::Preset;
use templar_protocol::Network;

use crate::error::NodeError;

/// The agreed configuration, with the model preset resolved (so the digest covers the shapes and
/// training settings themselves, not just a preset name a newer binary might define differently).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Network name: the first segment of every object key.
    pub name: String,
    pub model: Preset,
    /// Seed of the initial weights: every node starts from the same model.
    pub init_seed: u64,
    pub data: DataSettings,
    pub window: WindowSettings,
    pub training: TrainingSettings,
    pub codec: CodecConfig,
    pub gather: GatherSettings,
    pub gauntlet: GauntletSettings,
    pub checkpoints: CheckpointSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// `content_hash` of the prepared dataset's manifest: nodes refuse other data.
    pub manifest_hash: String,
    /// Seed of the per-(uid, window) sample assignment.
    pub sampler_seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    pub blocks_per_window: u64,
    /// The upload slot closes this long after the window's last block.
    pub upload_grace_ms: u64,
    /// Allowed disagreement between the storage server's clock and the chain's.
    pub clock_skew_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    /// Inner optimizer steps per window (fewer if the upload deadline comes first).
    pub inner_steps: u32,
    /// `θ ← θ − outer_lr · aggregate`.
    pub outer_lr: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatherSettings {
    /// Miners whose payloads make the aggregate, by incentive once there is any.
    pub peer_count: usize,
    /// Next in line, used in order when a peer's payload is missing or bad.
    pub reserve_count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GauntletSettings {
    /// Miners evaluated per window.
    pub uids_per_window: usize,
    /// Samples of own and of random data per evaluation.
    pub eval_samples: usize,
    /// The evaluated update is applied at `outer_lr · eval_lr_factor`.
    pub eval_lr_factor: f32,
    pub binary_ma_alpha: f64,
    /// A new miner's binary moving average. Upstream's 0 pays a miner nothing until its updates
    /// show that it trains on its own data; a small demo network, where that signal is below
    /// measurement noise, starts miners trusted instead (1) and lets the indicator take it away.
    #[serde(default)]
    pub binary_ma_initial: f64,
    pub openskill_beta: f64,
    pub openskill_tau: f64,
    /// A miner claiming a base this many windows behind has sync 0. Sync is reported, not
    /// scored: it is the miner's own claim (docs/node.md, "Sync").
    pub sync_max_steps_behind: u64,
    pub windows_per_weights: u64,
    /// Share of the miners' weight that goes to the `peer_count` best; reserves share the rest.
    pub gather_share: f64,
    /// No longer used: shares follow contribution instead of a rank ramp (docs/node.md,
    /// "Weights"). Accepted so that older network.toml files load.
    #[serde(default, skip_serializing)]
    pub gather_top_ratio: Option<f64>,
    /// No longer used, for the same reason.
    #[serde(default, skip_serializing)]
    pub reserve_decay: Option<f64>,
    /// Share of emission sent to `burn_uid` (when set).
    pub burn_rate: f64,
    pub burn_uid: Option<u16>,
    /// Index overlap at or above which the later of two uploaders is treated as a copier.
    pub overlap_threshold: f64,
    /// A payload whose norm exceeds this many times the window's lower median in most tensors
    /// did not come from the agreed training (the aggregate clips it anyway): its score is zeroed.
    #[serde(default = "default_norm_outlier_ratio")]
    pub norm_outlier_ratio: f64,
    /// Weights go only to miners whose updates help (moving average of the improvement on random
    /// data) at least this share as much as the best miner's: a rank ramp alone would pay a
    /// miner publishing zeros half of what it pays the best.
    #[serde(default = "default_min_score_ratio")]
    pub min_score_ratio: f64,
    /// Weight of the newest evaluation in that moving average: faster than the binary moving
    /// average's, so a miner whose updates stop helping (a replay going stale) stops being paid
    /// within a few evaluations.
    #[serde(default = "default_score_ma_alpha")]
    pub score_ma_alpha: f64,
    /// Weight of the newest evaluation in the slower moving average that pay is proportional
    /// to: identical miners evaluated a few times each must be paid alike.
    #[serde(default = "default_contribution_ma_alpha")]
    pub contribution_ma_alpha: f64,
    /// Multiplier on score and moving average for a missing, late or early payload.
    pub missing_slash: f64,
    /// No longer used: the slash punished a miner for the base it claims, which only an honest
    /// miner reports truthfully (docs/node.md, "Sync"). Accepted so that older network.toml
    /// files load.
    #[serde(default, skip_serializing)]
    pub sync_slash: Option<f64>,
    /// Consecutive windows without a usable payload after which a miner starts over as a
    /// newcomer: its score, moving averages and rating are reset, so it is paid nothing until
    /// evaluated again.
    pub inactivity_windows: u64,
    /// Samples of the validation split scored after every window (the network's progress).
    pub validation_samples: usize,
}

fn default_norm_outlier_ratio() -> f64 {
    5.0
}

fn default_min_score_ratio() -> f64 {
    0.25
}

fn default_score_ma_alpha() -> f64 {
    0.3
}

fn default_contribution_ma_alpha() -> f64 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// A validator publishes its model every this many windows.
    pub every: u64,
    /// Published checkpoints kept; older ones are deleted.
    pub keep: usize,
    /// Windows of payloads a miner keeps in its storage (what late nodes replay).
    pub payload_retention: u64,
}

/// The on-disk form: the model may be a preset name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    model: ModelChoice,
    #[serde(default)]
    init_seed: u64,
    data: DataSettings,
    window: WindowSettings,
    training: TrainingSettings,
    #[serde(default)]
    codec: CodecConfig,
    gather: GatherSettings,
    gauntlet: GauntletSettings,
    checkpoints: CheckpointSettings,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ModelChoice {
    Name(String),
    Inline(Box<Preset>),
}

impl NetworkConfig {
    pub fn load(path: &Path) -> Result<NetworkConfig, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            NodeError::Config(format!(
                "cannot read {}: {e}; pass the network's network.toml with --config",
                path.display()
            ))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<NetworkConfig, NodeError> {
        let file: File =
            toml::from_str(text).map_err(|e| NodeError::Config(format!("{origin}: {e}")))?;
        let model = match file.model {
            ModelChoice::Name(name) => {
                Preset::load(&name).map_err(|e| NodeError::Config(format!("{origin}: {e}")))?
            }
            ModelChoice::Inline(preset) => *preset,
        };
        let config = NetworkConfig {
            name: file.name,
            model,
            init_seed: file.init_seed,
            data: file.data,
            window: file.window,
            training: file.training,
            codec: file.codec,
            gather: file.gather,
            gauntlet: file.gauntlet,
            checkpoints: file.checkpoints,
        };
        config
            .check()
            .map_err(|e| NodeError::Config(format!("{origin}: {e}")))?;
        Ok(config)
    }

    /// The resolved configuration as TOML (what `templar localnet` writes).
    pub fn to_toml(&self) -> Result<String, NodeError> {
        toml::to_string_pretty(self).map_err(|e| NodeError::Config(e.to_string()))
    }

    /// Writes the configuration to `path` atomically (a reader sees the old file or the whole new
    /// one), after checking that what is written parses back.
    pub fn write(&self, path: &std::path::Path) -> Result<(), NodeError> {
        let text = self.to_toml()?;
        NetworkConfig::parse(&text, &path.display().to_string())?;
        let partial = path.with_extension("toml.partial");
        std::fs::write(&partial, text).map_err(|e| NodeError::io(&partial, e))?;
        std::fs::rename(&partial, path).map_err(|e| NodeError::io(path, e))
    }

    /// blake3 of the resolved configuration's canonical JSON.
    pub fn digest(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).unwrap_or_default();
        *blake3::hash(&json).as_bytes()
    }

    pub fn network(&self) -> Result<Network, NodeError> {
        Network::with_config(&self.name, &self.digest())
            .map_err(|e| NodeError::Config(e.to_string()))
    }

    fn check(&self) -> Result<(), String> {
        let w = &self.window;
        let g = &self.gauntlet;
        let rules: [(bool, &str); 18] = [
            (
                (0.0..=1.0).contains(&g.score_ma_alpha),
                "gauntlet.score_ma_alpha must be in [0, 1]",
            ),
            (
                g.contribution_ma_alpha > 0.0 && g.contribution_ma_alpha <= 1.0,
                "gauntlet.contribution_ma_alpha must be in (0, 1]",
            ),
            (
                g.norm_outlier_ratio > 1.0,
                "gauntlet.norm_outlier_ratio must be above 1",
            ),
            (
                (0.0..=1.0).contains(&g.min_score_ratio),
                "gauntlet.min_score_ratio must be in [0, 1]",
            ),
            (
                w.blocks_per_window > 0,
                "window.blocks_per_window must be positive",
            ),
            (
                self.training.inner_steps > 0,
                "training.inner_steps must be positive",
            ),
            (
                self.training.outer_lr.is_finite() && self.training.outer_lr > 0.0,
                "training.outer_lr must be a positive number",
            ),
            (
                self.gather.peer_count > 0,
                "gather.peer_count must be positive",
            ),
            (
                g.uids_per_window > 0,
                "gauntlet.uids_per_window must be positive",
            ),
            (g.eval_samples > 0, "gauntlet.eval_samples must be positive"),
            (
                g.windows_per_weights > 0,
                "gauntlet.windows_per_weights must be positive",
            ),
            (
                (0.0..=1.0).contains(&g.burn_rate),
                "gauntlet.burn_rate must be in [0, 1]",
            ),
            (
                (0.0..=1.0).contains(&g.gather_share),
                "gauntlet.gather_share must be in [0, 1]",
            ),
            (
                (0.0..=1.0).contains(&g.binary_ma_alpha),
                "gauntlet.binary_ma_alpha must be in [0, 1]",
            ),
            (
                (-1.0..=1.0).contains(&g.binary_ma_initial),
                "gauntlet.binary_ma_initial must be in [-1, 1]",
            ),
            (
                self.checkpoints.every > 0,
                "checkpoints.every must be positive",
            ),
            (
                self.checkpoints.keep > 0,
                "checkpoints.keep must be positive",
            ),
            // A node catching up replays every window since the newest checkpoint from the
            // miners' payloads, one more while that checkpoint is being published, and one more
            // for a window redone from its manifest (docs/node.md, "Retention").
            (
                self.checkpoints.payload_retention >= self.checkpoints.every + 2,
                "checkpoints.payload_retention must be at least checkpoints.every + 2: nodes \
                 catching up replay the windows since the newest checkpoint from miners' payloads",
            ),
        ];
        match rules.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message.to_string()),
            None => Ok(()),
        }
    }
}

/// Defaults for a production-like network (upstream's values where they apply).
impl NetworkConfig {
    pub fn defaults(name: &str, model: Preset, manifest_hash: &str) -> NetworkConfig {
        NetworkConfig {
            name: name.to_string(),
            model,
            init_seed: 0,
            data: DataSettings {
                manifest_hash: manifest_hash.to_string(),
                sampler_seed: 0,
            },
            window: WindowSettings {
                blocks_per_window: 125,
                upload_grace_ms: 60_000,
                clock_skew_ms: 10_000,
            },
            training: TrainingSettings {
                inner_steps: 30,
                // The convergence study's sweep (0.7, 1.0, 1.5) found 1.0 best with this
                // aggregation (docs/convergence.md).
                outer_lr: 1.0,
            },
            codec: CodecConfig::default(),
            gather: GatherSettings {
                peer_count: 20,
                reserve_count: 10,
            },
            gauntlet: GauntletSettings {
                uids_per_window: 15,
                eval_samples: 8,
                eval_lr_factor: 0.2,
                binary_ma_alpha: 0.05,
                binary_ma_initial: 0.0,
                openskill_beta: 7.0,
                openskill_tau: 0.1,
                sync_max_steps_behind: 3,
                windows_per_weights: 2,
                gather_share: 0.75,
                gather_top_ratio: None,
                reserve_decay: None,
                burn_rate: 0.0,
                burn_uid: None,
                overlap_threshold: 0.4,
                norm_outlier_ratio: default_norm_outlier_ratio(),
                min_score_ratio: default_min_score_ratio(),
                score_ma_alpha: default_score_ma_alpha(),
                contribution_ma_alpha: default_contribution_ma_alpha(),
                missing_slash: 0.75,
                sync_slash: None,
                inactivity_windows: 3,
                validation_samples: 32,
            },
            checkpoints: CheckpointSettings {
                every: 10,
                keep: 3,
                payload_retention: 100,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> NetworkConfig {
        NetworkConfig::defaults("testnet", Preset::load("tiny").unwrap(), "abc")
    }

    #[test]
    fn round_trips_through_toml_with_the_same_digest() {
        let config = sample();
        let text = config.to_toml().unwrap();
        let back = NetworkConfig::parse(&text, "test").unwrap();
        assert_eq!(back, config);
        assert_eq!(back.digest(), config.digest());
    }

    #[test]
    fn a_preset_name_resolves_and_any_change_changes_the_network_id() {
        let text = sample().to_toml().unwrap();
        let named = text.replacen("[model", "[unused_model", 1);
        assert!(NetworkConfig::parse(&named, "t").is_err());
        let mut other = sample();
        other.training.outer_lr = 0.5;
        assert_ne!(
            other.network().unwrap().id(),
            sample().network().unwrap().id()
        );
        assert_eq!(other.network().unwrap().name(), "testnet");
    }

    #[test]
    fn bad_values_are_named() {
        let mut config = sample();
        config.training.inner_steps = 0;
        let text = config.to_toml().unwrap();
        let err = NetworkConfig::parse(&text, "net.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("net.toml") && err.contains("inner_steps"),
            "{err}"
        );
        let mut config = sample();
        config.checkpoints.every = 10;
        config.checkpoints.payload_retention = 11;
        let err = NetworkConfig::parse(&config.to_toml().unwrap(), "net.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("payload_retention must be at least"), "{err}");
        config.checkpoints.payload_retention = 12;
        assert!(NetworkConfig::parse(&config.to_toml().unwrap(), "net.toml").is_ok());
        let err = NetworkConfig::parse("name = 3", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml"), "{err}");
    }
}

//! The four ways replicas can share what they learn, and their command-line names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the replicas of one run communicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// One AdamW model; every step's gradient is averaged over the replicas' batches with a dense
    /// fp32 all-reduce (the data-centre baseline).
    Ddp,
    /// `inner_steps` AdamW steps per replica, dense fp32 pseudo-gradients averaged, outer Nesterov.
    Diloco { inner_steps: u64 },
    /// DeMo: every step, momentum with DCT top-k extraction; the sign of the mean over choosers.
    Demo { topk: usize },
    /// templar's codec: error feedback, chunked top-k, 2-bit values, median-norm clip, mean over
    /// choosers, outer learning rate.
    SparseLoco { inner_steps: u64, topk: usize },
    /// SparseLoCo with overlapped windows: each round's aggregate arrives `delay` inner steps
    /// into the next round, under the live weights of replicas that started from their guess.
    Overlapped {
        inner_steps: u64,
        topk: usize,
        delay: u64,
    },
}

impl Method {
    /// Optimizer steps between two exchanges.
    pub fn inner_steps(self) -> u64 {
        match self {
            Method::Ddp | Method::Demo { .. } => 1,
            Method::Diloco { inner_steps }
            | Method::SparseLoco { inner_steps, .. }
            | Method::Overlapped { inner_steps, .. } => inner_steps,
        }
    }

    /// The quick default, about 20 minutes on two cores: every method, DiLoCo and SparseLoCo at two
    /// values of H, SparseLoCo at two densities, and one with overlapped windows.
    pub fn quick() -> Vec<Method> {
        vec![
            Method::Ddp,
            Method::Demo { topk: 32 },
            Method::Diloco { inner_steps: 10 },
            Method::Diloco { inner_steps: 30 },
            Method::SparseLoco {
                inner_steps: 10,
                topk: 32,
            },
            Method::SparseLoco {
                inner_steps: 10,
                topk: 64,
            },
            Method::SparseLoco {
                inner_steps: 30,
                topk: 64,
            },
            // sparseloco:10:32 with overlapped windows, the aggregate arriving a fifth of the
            // way into the next round (as a localnet gather does).
            Method::Overlapped {
                inner_steps: 10,
                topk: 32,
                delay: 2,
            },
        ]
    }

    /// The whole sweep: sparseloco over H ∈ {10, 30, 50} × k ∈ {32, 64, 128}, diloco at each H.
    pub fn sweep() -> Vec<Method> {
        let mut methods = vec![Method::Ddp, Method::Demo { topk: 32 }];
        for inner_steps in [10, 30, 50] {
            methods.push(Method::Diloco { inner_steps });
            for topk in [32, 64, 128] {
                methods.push(Method::SparseLoco { inner_steps, topk });
            }
        }
        methods
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Ddp => write!(f, "ddp"),
            Method::Diloco { inner_steps } => write!(f, "diloco:{inner_steps}"),
            Method::Demo { topk } => write!(f, "demo:{topk}"),
            Method::SparseLoco { inner_steps, topk } => {
                write!(f, "sparseloco:{inner_steps}:{topk}")
            }
            Method::Overlapped {
                inner_steps,
                topk,
                delay,
            } => write!(f, "overlapped:{inner_steps}:{topk}:{delay}"),
        }
    }
}

impl FromStr for Method {
    type Err = String;

    /// `ddp`, `diloco:H`, `demo:K`, `sparseloco:H:K` or `overlapped:H:K:D` (H inner steps, K values
    /// kept per chunk of 4096, D steps of a round before the last round's aggregate arrives).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').collect();
        let number = |s: &str, what: &str| -> Result<u64, String> {
            s.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("{text:?}: {what} must be a positive whole number, got {s:?}")
            })
        };
        match parts.as_slice() {
            ["ddp"] => Ok(Method::Ddp),
            ["diloco", h] => Ok(Method::Diloco {
                inner_steps: number(h, "H (inner steps)")?,
            }),
            ["demo", k] => Ok(Method::Demo {
                topk: number(k, "k (values kept per chunk)")? as usize,
            }),
            ["sparseloco", h, k] => Ok(Method::SparseLoco {
                inner_steps: number(h, "H (inner steps)")?,
                topk: number(k, "k (values kept per chunk)")? as usize,
            }),
            ["overlapped", h, k, d] => {
                let inner_steps = number(h, "H (inner steps)")?;
                let delay = d
                    .parse::<u64>()
                    .ok()
                    .filter(|&d| d < inner_steps)
                    .ok_or_else(|| {
                        format!(
                            "{text:?}: D (the steps before the aggregate arrives) must be a whole \
                         number below H, got {d:?}"
                        )
                    })?;
                Ok(Method::Overlapped {
                    inner_steps,
                    topk: number(k, "k (values kept per chunk)")? as usize,
                    delay,
                })
            }
            _ => Err(format!(
                "unknown run {text:?}: use ddp, diloco:H, demo:K, sparseloco:H:K or \
                 overlapped:H:K:D (for example sparseloco:30:64)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for method in Method::sweep() {
            assert_eq!(method.to_string().parse::<Method>(), Ok(method));
        }
    }

    #[test]
    fn an_overlapped_run_names_its_delay_below_its_steps() {
        let method = "overlapped:10:32:2".parse::<Method>().unwrap();
        assert_eq!(
            method,
            Method::Overlapped {
                inner_steps: 10,
                topk: 32,
                delay: 2
            }
        );
        assert_eq!(method.to_string(), "overlapped:10:32:2");
        let error = "overlapped:10:32:10".parse::<Method>().unwrap_err();
        assert!(error.contains("below H"), "{error}");
    }

    #[test]
    fn bad_names_say_what_is_expected() {
        let error = "sparseloco:30".parse::<Method>().unwrap_err();
        assert!(error.contains("sparseloco:H:K"), "{error}");
        let error = "diloco:0".parse::<Method>().unwrap_err();
        assert!(error.contains("positive"), "{error}");
    }

    #[test]
    fn the_sweep_covers_every_setting_of_the_issue() {
        let sweep = Method::sweep();
        assert_eq!(sweep.len(), 2 + 3 * 4);
        assert!(sweep.contains(&Method::SparseLoco {
            inner_steps: 50,
            topk: 128
        }));
    }
}

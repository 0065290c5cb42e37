//! The server's health and the tensor-parallel restart policy.
//!
//! The engine thread publishes a [`Health`]; `/health`, `/metrics` and the
//! handlers read it. When the tensor-parallel group breaks (a worker died or
//! failed), the engine thread fails what is in flight, then rebuilds the engine
//! (new workers, weights loaded again) while a [`RestartBudget`] allows it; a
//! spent budget is [`Health::Failed`], and the server exits non-zero so that its
//! supervisor restarts it.

use serde_json::json;

use super::errors::ApiError;

/// What the engine thread can do right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving.
    Ready,
    /// The tensor-parallel group broke (`reason`); the engine is being rebuilt, attempt
    /// `attempt` of `max_restarts`.
    Recovering {
        reason: String,
        attempt: usize,
        max_restarts: usize,
    },
    /// The group broke and no restart is left (or the last one failed): the server exits.
    Failed { reason: String, max_restarts: usize },
}

impl Health {
    /// Why requests are refused now; `None` when ready.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Health::Ready => None,
            Health::Recovering {
                reason,
                attempt,
                max_restarts,
            } => Some(format!(
                "the tensor-parallel group broke ({reason}); the server is restarting it \
                 (attempt {attempt} of {max_restarts}, --tp-max-restarts): retry shortly"
            )),
            Health::Failed {
                reason,
                max_restarts,
            } => {
                let spent = if *max_restarts == 0 {
                    "restarts are off (--tp-max-restarts 0)".to_string()
                } else {
                    format!("no restart is left (all {max_restarts} of --tp-max-restarts used)")
                };
                Some(format!(
                    "the tensor-parallel group broke ({reason}) and {spent}: the server is \
                     exiting so that its supervisor can restart it"
                ))
            }
        }
    }

    /// `status` of the `/health` body.
    pub fn status(&self) -> &'static str {
        match self {
            Health::Ready => "ok",
            Health::Recovering { .. } => "recovering",
            Health::Failed { .. } => "failed",
        }
    }

    /// The `/health` body when not ready: the OpenAI-shaped error plus `status` and the
    /// group's `reason`, so that a probe's log says why.
    pub fn body(&self) -> serde_json::Value {
        let Some(message) = self.unavailable() else {
            return json!({"status": self.status()});
        };
        let mut body = ApiError::EngineUnavailable { reason: message }.body();
        body["status"] = json!(self.status());
        match self {
            Health::Ready => {}
            Health::Recovering {
                reason,
                attempt,
                max_restarts,
            } => {
                body["reason"] = json!(reason);
                body["restart_attempt"] = json!(attempt);
                body["max_restarts"] = json!(max_restarts);
            }
            Health::Failed {
                reason,
                max_restarts,
            } => {
                body["reason"] = json!(reason);
                body["max_restarts"] = json!(max_restarts);
            }
        }
        body
    }
}

/// Restarts of the tensor-parallel group over the server's life. Every attempt counts,
/// failed ones too, so a group that keeps dying (or never comes back) ends the server
/// after `max` attempts instead of failing requests forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartBudget {
    max: usize,
    used: usize,
}

impl RestartBudget {
    pub fn new(max: usize) -> Self {
        Self { max, used: 0 }
    }

    /// Takes one attempt: its number (1-based), or `None` when none is left.
    pub fn take(&mut self) -> Option<usize> {
        if self.used >= self.max {
            return None;
        }
        self.used += 1;
        Some(self.used)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_max_attempts_then_none() {
        let mut b = RestartBudget::new(3);
        assert_eq!(b.take(), Some(1));
        assert_eq!(b.take(), Some(2));
        assert_eq!(b.take(), Some(3));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        assert_eq!(RestartBudget::new(0).take(), None);
    }

    #[test]
    fn unhealthy_bodies_say_why_and_what_happens_next() {
        assert_eq!(Health::Ready.unavailable(), None);
        assert_eq!(Health::Ready.body(), json!({"status": "ok"}));
        let reason = "worker rank 1 (pid 7) exited: signal: 9 (SIGKILL)";
        let recovering = Health::Recovering {
            reason: reason.into(),
            attempt: 1,
            max_restarts: 3,
        };
        let body = recovering.body();
        assert_eq!(body["status"], "recovering");
        assert_eq!(body["reason"], reason);
        assert_eq!(body["restart_attempt"], 1);
        assert_eq!(body["error"]["type"], "server_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
        assert!(message.contains("attempt 1 of 3"), "{message}");
        let failed = Health::Failed {
            reason: reason.into(),
            max_restarts: 0,
        };
        assert_eq!(failed.body()["status"], "failed");
        let message = failed.unavailable().unwrap();
        assert!(message.contains("--tp-max-restarts 0"), "{message}");
        assert!(message.contains("exiting"), "{message}");
        let spent = Health::Failed {
            reason: reason.into(),
            max_restarts: 3,
        };
        let message = spent.unavailable().unwrap();
        assert!(
            message.contains("all 3 of --tp-max-restarts used"),
            "{message}"
        );
    }
}

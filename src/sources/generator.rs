//! The `generator` connector: a built-in load generator. `scenario = 'logistics'` runs the
//! TMS simulator ([`super::logistics`]) and emits its transactions as Debezium events with
//! END markers, as a Postgres connector with transaction metadata would.
//!
//! The simulation is deterministic, so resuming after a restart replays it silently up to
//! the first record not applied yet.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::Result;
use super::connector::{Connector, SourceRecord};
use super::logistics::{Scenario, Simulator};
use super::txn::{Position, Stream, TxnBoundaries};
use crate::sql::{OptionError, WithOptions};

/// Transactions generated per poll at most, so a fast generator still yields to the runner,
/// and freshness (measured from generation) is not dominated by a long queue.
const MAX_TXNS_PER_POLL: u64 = 50;

/// `WITH (connector = 'generator', scenario = 'logistics', scale = .., rate = .., ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    pub scenario: Scenario,
    /// Transactions per second; 0 = as fast as possible.
    pub rate: f64,
    /// Stop after this many transactions.
    pub max_transactions: Option<u64>,
}

impl GeneratorConfig {
    /// The connector's own `WITH (...)` options.
    pub const OPTIONS: &'static [&'static str] = &["scenario", "scale", "seed", "rate", "max_transactions"];

    /// Read the connector's options; unknown ones are left to the caller to reject.
    pub fn from_options(options: impl Into<WithOptions>) -> Result<GeneratorConfig, OptionError> {
        let options = options.into();
        match options.get("scenario") {
            None | Some("logistics") => {}
            Some(other) => {
                return Err(OptionError::invalid("scenario", format!("unknown generator scenario \"{other}\" (available: logistics)")));
            }
        }
        let number = |k: &str| options.parse::<f64>(k, "a number");
        let defaults = Scenario::default();
        Ok(GeneratorConfig {
            scenario: Scenario {
                scale: number("scale")?.map_or(defaults.scale, |v| v.max(1.0) as usize),
                seed: number("seed")?.map_or(defaults.seed, |v| v as u64),
            },
            rate: number("rate")?.unwrap_or(100.0).max(0.0),
            max_transactions: number("max_transactions")?.map(|v| v as u64),
        })
    }
}

pub struct GeneratorConnector {
    config: GeneratorConfig,
    simulator: Simulator,
    /// Number of the next record to generate, and of the first one to hand out.
    next_record: u64,
    skip_to: u64,
    transactions: u64,
    /// Records generated but not handed out yet.
    buffered: VecDeque<SourceRecord>,
    started: Instant,
    /// Transactions generated since `started`, for the rate.
    since_start: u64,
}

impl GeneratorConnector {
    pub fn new(config: GeneratorConfig) -> GeneratorConnector {
        let simulator = Simulator::new(config.scenario.clone());
        GeneratorConnector {
            config,
            simulator,
            next_record: 0,
            skip_to: 0,
            transactions: 0,
            buffered: VecDeque::new(),
            started: Instant::now(),
            since_start: 0,
        }
    }

    /// Generate one transaction; records before `skip_to` were applied already.
    fn generate(&mut self) {
        let txn = self.simulator.next_txn();
        self.transactions += 1;
        // Reported as committed now, so freshness is measured against the wall clock.
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        for event in txn.debezium(now_ms) {
            let record = self.next_record;
            self.next_record += 1;
            if record >= self.skip_to {
                self.buffered.push_back(SourceRecord { position: Position::Generator { record }, payload: Some(event.into_bytes()) });
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.config.max_transactions.is_some_and(|max| self.transactions >= max)
    }
}

#[async_trait::async_trait]
impl Connector for GeneratorConnector {
    fn kind(&self) -> &'static str {
        "generator"
    }

    fn boundaries(&self) -> Option<TxnBoundaries> {
        Some(TxnBoundaries::Metadata)
    }

    fn idle_flush(&self) -> Option<Duration> {
        None
    }

    async fn open(&mut self, _upstreams: &[String], resume: &HashMap<Stream, u64>) -> Result<()> {
        let config = self.config.clone();
        *self = GeneratorConnector::new(config);
        self.skip_to = resume.get("generator").copied().unwrap_or(0);
        // Replay silently up to the resume point.
        while self.next_record < self.skip_to && !self.exhausted() {
            self.generate();
        }
        // What the last replayed transaction has from the resume point on is buffered.
        Ok(())
    }

    async fn poll(&mut self, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let deadline = Instant::now() + max_wait;
        loop {
            let due = if self.config.rate > 0.0 {
                ((self.started.elapsed().as_secs_f64() * self.config.rate) as u64).saturating_sub(self.since_start)
            } else {
                MAX_TXNS_PER_POLL
            };
            for _ in 0..due.min(MAX_TXNS_PER_POLL) {
                if self.exhausted() {
                    break;
                }
                self.generate();
                self.since_start += 1;
            }
            if !self.buffered.is_empty() || Instant::now() >= deadline {
                return Ok(self.buffered.drain(..).collect());
            }
            let wait = if self.exhausted() || self.config.rate <= 0.0 {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs_f64(1.0 / self.config.rate).min(deadline.saturating_duration_since(Instant::now()))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

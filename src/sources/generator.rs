//! The `generator` connector: a built-in load generator, emitting Debezium events with END
//! markers, as a Postgres connector with transaction metadata would.
//!
//! * `scenario = 'logistics'` runs the TMS simulator ([`super::logistics`]): multi-table
//!   transactions of inserts, updates and deletes.
//! * `scenario = 'nexmark'` produces the Nexmark benchmark's people, auctions and bids
//!   ([`super::nexmark`]), append-only, a fixed number of events per transaction.
//!
//! Both are deterministic, so resuming after a restart replays the stream silently up to the
//! first record not applied yet.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::Result;
use super::connector::{Connector, SourceRecord};
use super::logistics::{Scenario, Simulator};
use super::nexmark;
use super::txn::{Position, Stream, TxnBoundaries};
use crate::sql::{OptionError, WithOptions};

/// Transactions generated per poll at most, so a fast generator still yields to the runner,
/// and freshness (measured from generation) is not dominated by a long queue.
const MAX_TXNS_PER_POLL: u64 = 50;

/// What the generator simulates.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Logistics(Scenario),
    Nexmark(nexmark::Workload),
}

/// `WITH (connector = 'generator', scenario = 'logistics' | 'nexmark', rate = .., ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    pub workload: Workload,
    /// Transactions per second; 0 = as fast as possible.
    pub rate: f64,
    /// Stop after this many transactions.
    pub max_transactions: Option<u64>,
}

impl GeneratorConfig {
    /// The connector's own `WITH (...)` options.
    pub const OPTIONS: &'static [&'static str] =
        &["scenario", "scale", "seed", "rate", "max_transactions", "events", "events_per_transaction", "event_rate"];

    /// Options that only one scenario takes.
    const LOGISTICS_ONLY: &'static [&'static str] = &["scale"];
    const NEXMARK_ONLY: &'static [&'static str] = &["events", "events_per_transaction", "event_rate"];

    /// Read the connector's options; unknown ones are left to the caller to reject.
    pub fn from_options(options: impl Into<WithOptions>) -> Result<GeneratorConfig, OptionError> {
        let options = options.into();
        let number = |k: &str| options.parse::<f64>(k, "a number");
        let only = |scenario: &str, others: &[&str]| match others.iter().find(|o| options.get(o).is_some()) {
            Some(o) => Err(OptionError::invalid(o, format!("option \"{o}\" does not apply to generator scenario \"{scenario}\""))),
            None => Ok(()),
        };
        let rate = number("rate")?;
        let max_transactions = number("max_transactions")?.map(|v| v as u64);
        match options.get("scenario") {
            None | Some("logistics") => {
                only("logistics", Self::NEXMARK_ONLY)?;
                let defaults = Scenario::default();
                Ok(GeneratorConfig {
                    workload: Workload::Logistics(Scenario {
                        scale: number("scale")?.map_or(defaults.scale, |v| v.max(1.0) as usize),
                        seed: number("seed")?.map_or(defaults.seed, |v| v as u64),
                    }),
                    rate: rate.unwrap_or(100.0).max(0.0),
                    max_transactions,
                })
            }
            Some("nexmark") => {
                only("nexmark", Self::LOGISTICS_ONLY)?;
                let defaults = nexmark::Workload::default();
                // `rate` is in events per second here, as Nexmark states rates. Event time
                // advances at `event_rate`: by default at `rate`, so it keeps up with the wall
                // clock, or at the reference's 10,000 events/s when unthrottled.
                let events_rate = rate.unwrap_or(0.0).max(0.0);
                let event_rate = number("event_rate")?.filter(|r| *r > 0.0).unwrap_or(if events_rate > 0.0 {
                    events_rate
                } else {
                    nexmark::DEFAULT_EVENT_RATE
                });
                let per_txn = number("events_per_transaction")?.map_or(defaults.events_per_transaction, |v| v.max(1.0) as u64);
                Ok(GeneratorConfig {
                    workload: Workload::Nexmark(nexmark::Workload {
                        events: number("events")?.map(|v| v.max(0.0) as u64),
                        events_per_transaction: per_txn,
                        event_rate,
                        seed: number("seed")?.map_or(defaults.seed, |v| v.max(0.0) as u64),
                    }),
                    rate: events_rate / per_txn as f64,
                    max_transactions,
                })
            }
            Some(other) => {
                Err(OptionError::invalid("scenario", format!("unknown generator scenario \"{other}\" (available: logistics, nexmark)")))
            }
        }
    }
}

/// A running workload: the next transaction as Debezium JSON records.
enum Simulation {
    Logistics(Box<Simulator>),
    Nexmark(Box<nexmark::Generator>),
}

impl Simulation {
    fn new(workload: &Workload) -> Simulation {
        match workload {
            Workload::Logistics(scenario) => Simulation::Logistics(Box::new(Simulator::new(scenario.clone()))),
            Workload::Nexmark(workload) => Simulation::Nexmark(Box::new(nexmark::Generator::new(workload.clone()))),
        }
    }

    /// `None` when the workload is finished.
    fn next_txn(&mut self, ts_ms: i64) -> Option<Vec<String>> {
        match self {
            Simulation::Logistics(simulator) => Some(simulator.next_txn().debezium(ts_ms)),
            Simulation::Nexmark(generator) => generator.next_txn(ts_ms),
        }
    }

    fn finished(&self) -> bool {
        match self {
            Simulation::Logistics(_) => false,
            Simulation::Nexmark(generator) => generator.exhausted(),
        }
    }
}

pub struct GeneratorConnector {
    config: GeneratorConfig,
    simulation: Simulation,
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
        let simulation = Simulation::new(&config.workload);
        GeneratorConnector {
            config,
            simulation,
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
        // Reported as committed now, so freshness is measured against the wall clock.
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let Some(records) = self.simulation.next_txn(now_ms) else { return };
        self.transactions += 1;
        for event in records {
            let record = self.next_record;
            self.next_record += 1;
            if record >= self.skip_to {
                self.buffered.push_back(SourceRecord { position: Position::Generator { record }, payload: Some(event.into_bytes()) });
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.config.max_transactions.is_some_and(|max| self.transactions >= max) || self.simulation.finished()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> WithOptions {
        WithOptions::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn nexmark_options() {
        let config = GeneratorConfig::from_options(options(&[("scenario", "nexmark"), ("events", "1000"), ("rate", "0")])).expect("valid");
        assert_eq!(config.rate, 0.0);
        assert_eq!(config.workload, Workload::Nexmark(nexmark::Workload { events: Some(1000), ..nexmark::Workload::default() }));
        // Paced at 500 events/s: 10 transactions of 50 per second, event time at 500 events/s.
        let paced = GeneratorConfig::from_options(options(&[("scenario", "nexmark"), ("rate", "500")])).expect("valid");
        assert_eq!(paced.rate, 10.0);
        assert!(matches!(paced.workload, Workload::Nexmark(w) if w.event_rate == 500.0));
        let e = GeneratorConfig::from_options(options(&[("scenario", "nexmark"), ("scale", "5")])).expect_err("scale is logistics'");
        assert_eq!(e.option(), "scale");
        let e = GeneratorConfig::from_options(options(&[("events", "5")])).expect_err("events is nexmark's");
        assert_eq!(e.option(), "events");
    }
}

//! The Nexmark benchmark's event stream (people, auctions, bids) as Debezium change events,
//! for the generator connector's `scenario = 'nexmark'`.
//!
//! The events are those of the standard generator (Apache Beam's `NexmarkGenerator`, which
//! Flink's and RisingWave's Nexmark use), taken from the `nexmark` crate, RisingWave's Rust
//! port of it: per 50 events 1 person, 3 auctions and 46 bids; ids from 1000 (categories
//! from 10); hot sellers, bidders and auctions as the reference picks them; `date_time`
//! advancing by the inter-event delay of the event rate (10,000 events/s of event time by
//! default), so it is event time; auctions `expires` past `date_time` by the in-flight horizon.
//!
//! The streams are append-only: every event is an insert. A bid has no key of its own, so the
//! `bid` table is keyed by the bid's event id (`id`, unique over all events). Event `n` is always
//! the same event (the crate seeds each event's randomness with its id, and the base time is
//! fixed, not the wall clock), so a generator that resumes replays exactly what it produced.

use ::nexmark::EventGenerator;
use ::nexmark::config::NexmarkConfig;
use ::nexmark::event::Event;

/// The schema the upstream collections are named in: `upstream = 'nexmark.bid'`.
pub const SCHEMA: &str = "nexmark";

/// Event time of the first event: 2026-01-01 00:00:00 UTC. Fixed, so runs are reproducible.
pub const BASE_TIME_MS: u64 = 1_767_225_600_000;

/// Event-time rate when the source runs unthrottled (`rate = 0`): the reference default.
pub const DEFAULT_EVENT_RATE: f64 = 10_000.0;

/// Events of one reference epoch: 1 person, 3 auctions, 46 bids.
pub const EVENTS_PER_EPOCH: u64 = 50;

/// The Nexmark tables, columns and types as Flink and RisingWave declare them (`bid` with an
/// added key, the event id).
pub const TABLES: &[(&str, &[(&str, &str)])] = &[
    (
        "person",
        &[
            ("id", "BIGINT PRIMARY KEY"),
            ("name", "TEXT"),
            ("email_address", "TEXT"),
            ("credit_card", "TEXT"),
            ("city", "TEXT"),
            ("state", "TEXT"),
            ("date_time", "TIMESTAMP"),
            ("extra", "TEXT"),
        ],
    ),
    (
        "auction",
        &[
            ("id", "BIGINT PRIMARY KEY"),
            ("item_name", "TEXT"),
            ("description", "TEXT"),
            ("initial_bid", "BIGINT"),
            ("reserve", "BIGINT"),
            ("date_time", "TIMESTAMP"),
            ("expires", "TIMESTAMP"),
            ("seller", "BIGINT"),
            ("category", "BIGINT"),
            ("extra", "TEXT"),
        ],
    ),
    (
        "bid",
        &[
            ("id", "BIGINT PRIMARY KEY"),
            ("auction", "BIGINT"),
            ("bidder", "BIGINT"),
            ("price", "BIGINT"),
            ("channel", "TEXT"),
            ("url", "TEXT"),
            ("date_time", "TIMESTAMP"),
            ("extra", "TEXT"),
        ],
    ),
];

/// `CREATE TABLE person/auction/bid ... WITH (source = '<source>', upstream = 'nexmark.<table>',
/// watermark = 'date_time - INTERVAL ''4'' SECOND')`: the 4-second watermark of Flink's Nexmark DDL.
pub fn create_tables_sql(source: &str) -> String {
    TABLES
        .iter()
        .map(|(table, columns)| {
            let columns: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
            format!(
                "CREATE TABLE {table} ({}) WITH (source = '{source}', upstream = '{SCHEMA}.{table}', watermark = 'date_time - INTERVAL ''4'' SECOND');\n",
                columns.join(", ")
            )
        })
        .collect()
}

/// What the Nexmark scenario generates.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Stop after this many events; `None`: never.
    pub events: Option<u64>,
    /// Events per source transaction.
    pub events_per_transaction: u64,
    /// Events per second of event time: `date_time` advances by `1 / event_rate` per event.
    pub event_rate: f64,
    /// Which part of the standard event sequence: it starts at epoch `seed` (of 50 events),
    /// so 0 is the reference sequence with ids from 1000.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload { events: None, events_per_transaction: EVENTS_PER_EPOCH, event_rate: DEFAULT_EVENT_RATE, seed: 0 }
    }
}

/// Produces the Nexmark events, a transaction at a time.
pub struct Generator {
    events: EventGenerator,
    /// Event id of the first event (the crate's `first_event_id`).
    first_event_id: u64,
    workload: Workload,
    generated: u64,
    transactions: u64,
}

impl Generator {
    pub fn new(workload: Workload) -> Generator {
        let rate = workload.event_rate.round().max(1.0) as usize;
        let first_event_id = workload.seed.saturating_mul(EVENTS_PER_EPOCH);
        let config = NexmarkConfig {
            base_time: BASE_TIME_MS,
            first_rate: rate,
            next_rate: rate,
            first_event_id: first_event_id as usize,
            ..NexmarkConfig::default()
        };
        Generator { events: EventGenerator::new(config), first_event_id, workload, generated: 0, transactions: 0 }
    }

    /// All `events` were generated.
    pub fn exhausted(&self) -> bool {
        self.workload.events.is_some_and(|max| self.generated >= max)
    }

    /// The next events, up to a transaction's worth, each with its event id.
    pub fn next_events(&mut self) -> Vec<(u64, Event)> {
        let left = self.workload.events.map_or(u64::MAX, |max| max.saturating_sub(self.generated));
        let n = self.workload.events_per_transaction.max(1).min(left);
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = self.first_event_id + self.events.offset();
            let Some(event) = self.events.next() else { break };
            out.push((id, event));
        }
        self.generated += out.len() as u64;
        out
    }

    /// The next transaction as Debezium JSON records of one stream: BEGIN, one create event per
    /// Nexmark event, END with the counts per table. `None` once `events` were generated.
    /// `ts_ms` is the commit time reported (wall clock: freshness is measured from it).
    pub fn next_txn(&mut self, ts_ms: i64) -> Option<Vec<String>> {
        if self.exhausted() {
            return None;
        }
        let events = self.next_events();
        if events.is_empty() {
            return None;
        }
        self.transactions += 1;
        let txn = self.transactions;
        let mut out = Vec::with_capacity(events.len() + 2);
        out.push(format!(r#"{{"status":"BEGIN","id":"nexmark-{txn}","ts_ms":{ts_ms},"event_count":null,"data_collections":null}}"#));
        let mut counts = [0u64; 3];
        for (i, (id, event)) in events.iter().enumerate() {
            let (table, n, after) = match event {
                Event::Person(p) => (
                    0,
                    &mut counts[0],
                    format!(
                        r#"{{"id":{},"name":{},"email_address":{},"credit_card":{},"city":{},"state":{},"date_time":"{}","extra":{}}}"#,
                        p.id,
                        text(&p.name),
                        text(&p.email_address),
                        text(&p.credit_card),
                        text(&p.city),
                        text(&p.state),
                        timestamp(p.date_time),
                        text(&p.extra)
                    ),
                ),
                Event::Auction(a) => (
                    1,
                    &mut counts[1],
                    format!(
                        r#"{{"id":{},"item_name":{},"description":{},"initial_bid":{},"reserve":{},"date_time":"{}","expires":"{}","seller":{},"category":{},"extra":{}}}"#,
                        a.id,
                        text(&a.item_name),
                        text(&a.description),
                        a.initial_bid,
                        a.reserve,
                        timestamp(a.date_time),
                        timestamp(a.expires),
                        a.seller,
                        a.category,
                        text(&a.extra)
                    ),
                ),
                Event::Bid(b) => (
                    2,
                    &mut counts[2],
                    format!(
                        r#"{{"id":{id},"auction":{},"bidder":{},"price":{},"channel":{},"url":{},"date_time":"{}","extra":{}}}"#,
                        b.auction,
                        b.bidder,
                        b.price,
                        text(&b.channel),
                        text(&b.url),
                        timestamp(b.date_time),
                        text(&b.extra)
                    ),
                ),
            };
            *n += 1;
            let table = TABLES[table].0;
            out.push(format!(
                r#"{{"before":null,"after":{after},"source":{{"connector":"nexmark","name":"nexmark","ts_ms":{ts_ms},"snapshot":"false","schema":"{SCHEMA}","table":"{table}"}},"op":"c","ts_ms":{ts_ms},"transaction":{{"id":"nexmark-{txn}","total_order":{},"data_collection_order":{n}}}}}"#,
                i + 1
            ));
        }
        let collections: Vec<String> = TABLES
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|((table, _), n)| format!(r#"{{"data_collection":"{SCHEMA}.{table}","event_count":{n}}}"#))
            .collect();
        out.push(format!(
            r#"{{"status":"END","id":"nexmark-{txn}","ts_ms":{ts_ms},"event_count":{},"data_collections":[{}]}}"#,
            events.len(),
            collections.join(",")
        ));
        Some(out)
    }
}

/// A JSON string literal.
fn text(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.mmm` (UTC) for milliseconds since the epoch.
fn timestamp(ms: u64) -> String {
    arrow::temporal_conversions::timestamp_ms_to_datetime(ms as i64)
        .map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_with_milliseconds() {
        assert_eq!(timestamp(BASE_TIME_MS), "2026-01-01T00:00:00.000");
        assert_eq!(timestamp(BASE_TIME_MS + 86_400_000 * 59 + 3_723_004), "2026-03-01T01:02:03.004");
    }

    #[test]
    fn proportions_ids_and_event_time_follow_the_reference() {
        let mut generator = Generator::new(Workload { events: Some(5_000), ..Workload::default() });
        let mut all = Vec::new();
        while !generator.exhausted() {
            all.extend(generator.next_events());
        }
        assert_eq!(all.len(), 5_000);
        let people = all.iter().filter(|(_, e)| matches!(e, Event::Person(_))).count();
        let auctions = all.iter().filter(|(_, e)| matches!(e, Event::Auction(_))).count();
        assert_eq!((people, auctions, all.len() - people - auctions), (100, 300, 4_600));
        // The first person and auction are 1000; 10,000 events/s: event 4999 is 0.4999 s later.
        assert!(matches!(&all[0].1, Event::Person(p) if p.id == 1000 && p.date_time == BASE_TIME_MS));
        assert!(matches!(&all[1].1, Event::Auction(a) if a.id == 1000 && a.expires > a.date_time));
        assert_eq!(all[4999].1.timestamp(), BASE_TIME_MS + 500);
        // Bids go to auctions and by people that exist (or are about to: the reference's lead).
        for (id, e) in &all {
            if let Event::Bid(b) = e {
                assert!(b.auction >= 1000 && b.auction < 1000 + 300 + 10, "bid {id}: auction {}", b.auction);
                assert!(b.bidder >= 1000 && b.bidder < 1000 + 100 + 10, "bid {id}: bidder {}", b.bidder);
            }
        }
    }

    #[test]
    fn transactions_are_deterministic_debezium_with_end_counts() {
        let workload = Workload { events: Some(120), ..Workload::default() };
        let a: Vec<Vec<String>> = std::iter::from_fn({
            let mut g = Generator::new(workload.clone());
            move || g.next_txn(7)
        })
        .collect();
        let b: Vec<Vec<String>> = std::iter::from_fn({
            let mut g = Generator::new(workload.clone());
            move || g.next_txn(7)
        })
        .collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|t| t.len() - 2).collect::<Vec<_>>(), vec![50, 50, 20]);
        for record in a.iter().flatten() {
            let value: serde_json::Value = serde_json::from_str(record).expect("valid JSON");
            assert!(value.get("status").is_some() || value["after"]["date_time"].is_string());
        }
        let end: serde_json::Value = serde_json::from_str(a[0].last().expect("END")).expect("JSON");
        assert_eq!(end["event_count"], 50);
        assert_eq!(end["data_collections"][2], serde_json::json!({"data_collection": "nexmark.bid", "event_count": 46}));
    }
}

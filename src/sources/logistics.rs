//! The TMS simulator: a transport management system's database, driven the way the real one
//! writes it.
//!
//! Loads (a trip with its legs, stops, shipments, pickups, handling units and notes) are
//! planned, loaded, depart, arrive stop by stop and are delivered; some pickups fail and are
//! retried. Like the legacy TMS, every transaction spans several tables, some updates are
//! written as DELETE + INSERT of the row, and a row is often touched several times in one
//! transaction (a status set, then corrected). Timestamps follow a simulated clock that
//! advances with every transaction, so planned and actual times, delays and ETAs are
//! meaningful and every run with the same seed is the same.
//!
//! The simulation yields [`SimTxn`]s of row changes; [`SimTxn::debezium`] renders one as the
//! Debezium events plus transaction END marker a Postgres connector would emit, and
//! [`SimTxn::sql`] as the SQL statements that write it into a real Postgres.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};

/// The TMS tables: name and columns (name, SQL type). The first column is the primary key.
pub const TABLES: &[(&str, &[(&str, &str)])] = &[
    ("customers", &[("id", "BIGINT"), ("name", "TEXT"), ("region", "TEXT")]),
    (
        "trips",
        &[
            ("id", "BIGINT"),
            ("load_ref", "TEXT"),
            ("carrier", "TEXT"),
            ("vehicle", "TEXT"),
            ("status", "TEXT"),
            ("planned_departure", "TIMESTAMP"),
            ("actual_departure", "TIMESTAMP"),
            ("updated_at", "TIMESTAMP"),
        ],
    ),
    (
        "legs",
        &[
            ("id", "BIGINT"),
            ("trip_id", "BIGINT"),
            ("seq", "INT"),
            ("origin", "TEXT"),
            ("destination", "TEXT"),
            ("planned_departure", "TIMESTAMP"),
            ("planned_arrival", "TIMESTAMP"),
        ],
    ),
    (
        "stops",
        &[
            ("id", "BIGINT"),
            ("trip_id", "BIGINT"),
            ("leg_id", "BIGINT"),
            ("seq", "INT"),
            ("location", "TEXT"),
            ("kind", "TEXT"),
            ("status", "TEXT"),
            ("planned_at", "TIMESTAMP"),
            ("arrived_at", "TIMESTAMP"),
            ("departed_at", "TIMESTAMP"),
        ],
    ),
    (
        "shipments",
        &[
            ("id", "BIGINT"),
            ("trip_id", "BIGINT"),
            ("customer_id", "BIGINT"),
            ("reference", "TEXT"),
            ("status", "TEXT"),
            ("weight_kg", "DOUBLE PRECISION"),
            ("planned_delivery", "TIMESTAMP"),
            ("delivered_at", "TIMESTAMP"),
            ("updated_at", "TIMESTAMP"),
        ],
    ),
    (
        "pickups",
        &[
            ("id", "BIGINT"),
            ("shipment_id", "BIGINT"),
            ("stop_id", "BIGINT"),
            ("attempt", "INT"),
            ("status", "TEXT"),
            ("reason", "TEXT"),
            ("planned_at", "TIMESTAMP"),
            ("actual_at", "TIMESTAMP"),
        ],
    ),
    (
        "handling_units",
        &[
            ("id", "BIGINT"),
            ("shipment_id", "BIGINT"),
            ("trip_id", "BIGINT"),
            ("kind", "TEXT"),
            ("sscc", "TEXT"),
            ("weight_kg", "DOUBLE PRECISION"),
        ],
    ),
    ("notes", &[("id", "BIGINT"), ("trip_id", "BIGINT"), ("author", "TEXT"), ("body", "TEXT"), ("created_at", "TIMESTAMP")]),
];

/// `CREATE TABLE` statements for the TMS tables, as the upstream Postgres has them.
pub fn postgres_ddl() -> String {
    TABLES
        .iter()
        .map(|(table, columns)| {
            let cols: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, (c, t))| if i == 0 { format!("{c} {t} PRIMARY KEY") } else { format!("{c} {t}") })
                .collect();
            format!("CREATE TABLE {table} ({});\n", cols.join(", "))
        })
        .collect()
}

/// A row: column name -> JSON value (numbers, strings, ISO timestamps, null).
pub type Row = Map<String, Value>;

/// One row change of a simulated transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    Insert { table: &'static str, row: Row },
    Update { table: &'static str, before: Row, after: Row },
    Delete { table: &'static str, row: Row },
}

impl RowChange {
    /// The row's primary key.
    pub fn key(&self) -> i64 {
        match self {
            RowChange::Insert { row, .. } | RowChange::Update { after: row, .. } | RowChange::Delete { row, .. } => {
                row.get("id").and_then(Value::as_i64).unwrap_or_default()
            }
        }
    }

    /// An update of the primary key (Debezium writes it as a delete and a create).
    pub fn updates_key(&self) -> bool {
        matches!(self, RowChange::Update { before, after, .. } if before.get("id") != after.get("id"))
    }

    pub fn table(&self) -> &'static str {
        match self {
            RowChange::Insert { table, .. } | RowChange::Update { table, .. } | RowChange::Delete { table, .. } => table,
        }
    }
}

/// One source transaction of the TMS.
#[derive(Debug, Clone, PartialEq)]
pub struct SimTxn {
    /// Postgres-like transaction id, increasing.
    pub xid: u64,
    /// Simulated commit time, microseconds since the epoch.
    pub commit_us: i64,
    /// WAL position of the transaction's BEGIN; its events and commit follow (see [`SimTxn::lsn`]).
    pub begin_lsn: u64,
    /// Commit LSN of the transaction before it (Debezium's `source.sequence` names it).
    pub prev_commit_lsn: u64,
    pub changes: Vec<RowChange>,
}

/// Tables the simulated database keeps with `REPLICA IDENTITY DEFAULT`: the WAL carries only
/// the key of a deleted row and no old row of an update, so Debezium writes `before` with the
/// key columns only (deletes) or `null` (updates). The other tables are `FULL`.
pub const DEFAULT_REPLICA_IDENTITY: [&str; 2] = ["handling_units", "notes"];

/// Bytes of WAL per simulated record: LSNs grow by this much from record to record.
const WAL_RECORD: u64 = 0x48;

/// One record as Debezium's Postgres connector (`provide.transaction.metadata = true`)
/// writes it to Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct DebeziumRecord {
    /// The table whose topic carries it; `None`: the transaction metadata topic.
    pub table: Option<&'static str>,
    /// The message key: the row's id, or the txId for BEGIN/END.
    pub key: String,
    /// The message value; `None` is the tombstone that follows a delete.
    pub value: Option<String>,
}

impl SimTxn {
    /// LSN of the transaction's `n`th record: 0 is BEGIN, 1..=events its change events, then
    /// the commit (END).
    pub fn lsn(&self, n: usize) -> u64 {
        self.begin_lsn + n as u64 * WAL_RECORD
    }

    /// The row changes as Debezium sees them: an update of the primary key is a delete of the
    /// old key and a create of the new one.
    fn events(&self) -> Vec<(&'static str, &'static str, Option<&Row>, Option<&Row>)> {
        let mut out = Vec::with_capacity(self.changes.len());
        for change in &self.changes {
            match change {
                RowChange::Insert { table, row } => out.push((*table, "c", None, Some(row))),
                RowChange::Update { table, before, after } if change.updates_key() => {
                    out.push((*table, "d", Some(before), None));
                    out.push((*table, "c", None, Some(after)));
                }
                RowChange::Update { table, before, after } => out.push((*table, "u", Some(before), Some(after))),
                RowChange::Delete { table, row } => out.push((*table, "d", Some(row), None)),
            }
        }
        out
    }

    /// The commit LSN: the END marker's, after one record per event (a key update is two).
    pub fn commit_lsn(&self) -> u64 {
        let key_updates = self.changes.iter().filter(|c| c.updates_key()).count();
        self.lsn(self.changes.len() + key_updates + 1)
    }

    /// The transaction exactly as Debezium's Postgres connector writes it: a BEGIN marker,
    /// each change event with `transaction.id` `"txId:LSN"` of its own LSN, `source.lsn`,
    /// `source.sequence`, a tombstone after each delete, `before` as the table's replica
    /// identity allows, and the END marker at the commit LSN. `ts_ms` is the commit time to
    /// report (the simulated one, or the wall clock when generated live).
    pub fn debezium_records(&self, ts_ms: i64) -> Vec<DebeziumRecord> {
        let events = self.events();
        let marker = |status: &str, lsn: u64, counts: Option<(usize, &BTreeMap<&str, u64>)>| {
            let (event_count, collections) = match counts {
                Some((n, per_table)) => {
                    (json!(n), per_table.iter().map(|(t, n)| json!({"data_collection": format!("public.{t}"), "event_count": n})).collect())
                }
                None => (Value::Null, Value::Null),
            };
            let id = format!("{}:{lsn}", self.xid);
            let value = json!({"status": status, "id": id, "ts_ms": ts_ms, "event_count": event_count, "data_collections": collections});
            DebeziumRecord { table: None, key: self.xid.to_string(), value: Some(value.to_string()) }
        };
        let mut per_table: BTreeMap<&str, u64> = BTreeMap::new();
        let mut out = Vec::with_capacity(events.len() * 2 + 2);
        out.push(marker("BEGIN", self.lsn(0), None));
        for (i, (table, op, before, after)) in events.iter().enumerate() {
            let n = per_table.entry(table).or_default();
            *n += 1;
            let lsn = self.lsn(i + 1);
            let row_key = after.or(*before).and_then(|r| r.get("id")).map_or(String::new(), Value::to_string);
            let default_identity = DEFAULT_REPLICA_IDENTITY.contains(table);
            let before = match (before, *op) {
                (Some(_), "u") if default_identity => Value::Null,
                (Some(row), "d") if default_identity => {
                    Value::Object(row.iter().map(|(k, v)| (k.clone(), if k == "id" { v.clone() } else { Value::Null })).collect())
                }
                (Some(row), _) => Value::Object((*row).clone()),
                (None, _) => Value::Null,
            };
            let event = json!({
                "before": before,
                "after": after.map_or(Value::Null, |r| Value::Object(r.clone())),
                "source": {"version": "2.5.0.Final", "connector": "postgresql", "name": "tms", "ts_ms": ts_ms,
                           "snapshot": "false", "db": "tms",
                           "sequence": json!([self.prev_commit_lsn.to_string(), lsn.to_string()]).to_string(),
                           "schema": "public", "table": table, "txId": self.xid, "lsn": lsn, "xmin": Value::Null},
                "op": op,
                "ts_ms": ts_ms,
                "transaction": {"id": format!("{}:{lsn}", self.xid), "total_order": i + 1, "data_collection_order": *n},
            });
            out.push(DebeziumRecord { table: Some(table), key: row_key.clone(), value: Some(event.to_string()) });
            if *op == "d" {
                out.push(DebeziumRecord { table: Some(table), key: row_key, value: None });
            }
        }
        out.push(marker("END", self.lsn(events.len() + 1), Some((events.len(), &per_table))));
        out
    }

    /// [`SimTxn::debezium_records`] as JSON lines of one stream: tombstones are `null`.
    pub fn debezium(&self, ts_ms: i64) -> Vec<String> {
        self.debezium_records(ts_ms).into_iter().map(|r| r.value.unwrap_or_else(|| "null".into())).collect()
    }

    /// The transaction as SQL statements for Postgres (without BEGIN/COMMIT).
    pub fn sql(&self) -> Vec<String> {
        let literal = |v: &Value| match v {
            Value::Null => "NULL".to_string(),
            Value::String(s) => format!("'{}'", s.replace('\'', "''")),
            other => other.to_string(),
        };
        let key = |row: &Row| literal(row.get("id").unwrap_or(&Value::Null));
        self.changes
            .iter()
            .map(|c| match c {
                RowChange::Insert { table, row } => {
                    let cols: Vec<&str> = row.keys().map(String::as_str).collect();
                    let vals: Vec<String> = row.values().map(literal).collect();
                    format!("INSERT INTO {table} ({}) VALUES ({})", cols.join(", "), vals.join(", "))
                }
                RowChange::Update { table, before, after } => {
                    let sets: Vec<String> = after
                        .iter()
                        .filter(|(k, v)| before.get(k.as_str()) != Some(v))
                        .map(|(k, v)| format!("{k} = {}", literal(v)))
                        .collect();
                    let sets = if sets.is_empty() { "id = id".to_string() } else { sets.join(", ") };
                    format!("UPDATE {table} SET {sets} WHERE id = {}", key(before))
                }
                RowChange::Delete { table, row } => format!("DELETE FROM {table} WHERE id = {}", key(row)),
            })
            .collect()
    }
}

/// What the simulation is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Loads in flight at once; completed loads are archived (deleted) once this many more
    /// have completed after them, so the data stays about `scale` loads large.
    pub scale: usize,
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario { scale: 100, seed: 42 }
    }
}

const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];
const CITIES: [&str; 12] = [
    "Hamburg",
    "Berlin",
    "Munich",
    "Cologne",
    "Frankfurt",
    "Stuttgart",
    "Leipzig",
    "Dortmund",
    "Bremen",
    "Hanover",
    "Nuremberg",
    "Dresden",
];
const CARRIERS: [&str; 6] = ["Nordfracht", "RheinLog", "AlpTrans", "Elbe Cargo", "Spree Express", "MainLine"];
const FAILURE_REASONS: [&str; 4] = ["NO_SHOW", "SITE_CLOSED", "NOT_READY", "REFUSED"];
/// Simulated seconds per transaction.
const TICK_SECONDS: i64 = 20;
/// 2026-01-05T06:00:00Z.
const EPOCH_US: i64 = 1_767_592_800_000_000;

/// The rows of one load, to update and finally archive them.
#[derive(Debug, Clone)]
struct Load {
    trip: Row,
    legs: Vec<Row>,
    stops: Vec<Row>,
    shipments: Vec<Row>,
    pickups: Vec<Row>,
    units: Vec<Row>,
    notes: Vec<Row>,
    /// Next step: 0 load, 1 depart, 2.. arrive at stop (step - 1), then delivered.
    step: usize,
    /// Minutes late, drifting as the trip goes on.
    delay_min: i64,
}

/// The TMS: deterministic, driven one transaction at a time.
pub struct Simulator {
    scenario: Scenario,
    rng: u64,
    xid: u64,
    now_us: i64,
    next_id: BTreeMap<&'static str, i64>,
    customers: i64,
    active: Vec<Load>,
    completed: VecDeque<Load>,
    /// Commit LSN of the last transaction.
    last_commit_lsn: u64,
}

fn ts(us: i64) -> Value {
    let secs = us.div_euclid(1_000_000);
    let dt = chrono_like(secs);
    Value::String(dt)
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (UTC).
fn chrono_like(secs: i64) -> String {
    arrow::temporal_conversions::timestamp_s_to_datetime(secs).map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
}

fn row(pairs: &[(&str, Value)]) -> Row {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

impl Simulator {
    pub fn new(scenario: Scenario) -> Simulator {
        let rng = scenario.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Simulator {
            scenario,
            rng,
            xid: 1000,
            now_us: EPOCH_US,
            next_id: BTreeMap::new(),
            customers: 0,
            active: Vec::new(),
            completed: VecDeque::new(),
            last_commit_lsn: 0x1_6B37_4D48,
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    fn id(&mut self, table: &'static str) -> i64 {
        let e = self.next_id.entry(table).or_insert(0);
        *e += 1;
        *e
    }

    /// The next transaction.
    pub fn next_txn(&mut self) -> SimTxn {
        self.xid += 1;
        self.now_us += TICK_SECONDS * 1_000_000;
        let mut changes = Vec::new();
        if self.customers == 0 {
            self.create_customers(&mut changes);
        } else if self.active.len() < self.scenario.scale && (self.active.is_empty() || self.rand(3) == 0) {
            self.plan_load(&mut changes);
        } else {
            let i = self.rand(self.active.len() as u64) as usize;
            self.advance(i, &mut changes);
        }
        // Other databases' transactions share the WAL: a gap between ours.
        let begin_lsn = self.last_commit_lsn + WAL_RECORD * (1 + self.rand(16));
        let txn = SimTxn { xid: self.xid, commit_us: self.now_us, begin_lsn, prev_commit_lsn: self.last_commit_lsn, changes };
        self.last_commit_lsn = txn.commit_lsn();
        txn
    }

    fn create_customers(&mut self, changes: &mut Vec<RowChange>) {
        self.customers = (self.scenario.scale as i64 / 4).clamp(5, 500);
        for i in 1..=self.customers {
            let r = row(&[
                ("id", json!(i)),
                ("name", json!(format!("Customer {i:03}"))),
                ("region", json!(REGIONS[i as usize % REGIONS.len()])),
            ]);
            changes.push(RowChange::Insert { table: "customers", row: r });
        }
        self.next_id.insert("customers", self.customers);
    }

    fn plan_load(&mut self, changes: &mut Vec<RowChange>) {
        let trip_id = self.id("trips");
        let departure = self.now_us + (30 + self.rand(90) as i64) * 60_000_000;
        let carrier = CARRIERS[self.rand(CARRIERS.len() as u64) as usize];
        let trip = row(&[
            ("id", json!(trip_id)),
            ("load_ref", json!(format!("LOAD-{trip_id:06}"))),
            ("carrier", json!(carrier)),
            ("vehicle", json!(format!("TRK-{:03}", self.rand(400)))),
            ("status", json!("PLANNED")),
            ("planned_departure", ts(departure)),
            ("actual_departure", Value::Null),
            ("updated_at", ts(self.now_us)),
        ]);
        changes.push(RowChange::Insert { table: "trips", row: trip.clone() });
        let mut load = Load {
            trip,
            legs: vec![],
            stops: vec![],
            shipments: vec![],
            pickups: vec![],
            units: vec![],
            notes: vec![],
            step: 0,
            delay_min: 0,
        };
        // Legs chain cities; each leg ends at a stop, the first stop is the pickup.
        let legs = 1 + self.rand(3) as usize;
        let mut city = self.rand(CITIES.len() as u64) as usize;
        let mut at = departure;
        let first_stop = self.id("stops");
        load.stops.push(row(&[
            ("id", json!(first_stop)),
            ("trip_id", json!(trip_id)),
            ("leg_id", Value::Null),
            ("seq", json!(0)),
            ("location", json!(CITIES[city])),
            ("kind", json!("PICKUP")),
            ("status", json!("PENDING")),
            ("planned_at", ts(at)),
            ("arrived_at", Value::Null),
            ("departed_at", Value::Null),
        ]));
        for seq in 1..=legs {
            let next = (city + 1 + self.rand(CITIES.len() as u64 - 1) as usize) % CITIES.len();
            let arrive = at + (90 + self.rand(150) as i64) * 60_000_000;
            let leg_id = self.id("legs");
            load.legs.push(row(&[
                ("id", json!(leg_id)),
                ("trip_id", json!(trip_id)),
                ("seq", json!(seq)),
                ("origin", json!(CITIES[city])),
                ("destination", json!(CITIES[next])),
                ("planned_departure", ts(at)),
                ("planned_arrival", ts(arrive)),
            ]));
            let stop_id = self.id("stops");
            load.stops.push(row(&[
                ("id", json!(stop_id)),
                ("trip_id", json!(trip_id)),
                ("leg_id", json!(leg_id)),
                ("seq", json!(seq)),
                ("location", json!(CITIES[next])),
                ("kind", json!(if seq == legs { "DELIVERY" } else { "TRANSIT" })),
                ("status", json!("PENDING")),
                ("planned_at", ts(arrive)),
                ("arrived_at", Value::Null),
                ("departed_at", Value::Null),
            ]));
            city = next;
            at = arrive + 30 * 60_000_000;
        }
        let delivery = load.stops.last().and_then(|s| s.get("planned_at").cloned()).unwrap_or(Value::Null);
        for _ in 0..1 + self.rand(3) {
            let shipment_id = self.id("shipments");
            let customer = 1 + self.rand(self.customers as u64) as i64;
            let weight = 100.0 + self.rand(19_000) as f64 / 10.0;
            load.shipments.push(row(&[
                ("id", json!(shipment_id)),
                ("trip_id", json!(trip_id)),
                ("customer_id", json!(customer)),
                ("reference", json!(format!("SHP-{shipment_id:07}"))),
                ("status", json!("PLANNED")),
                ("weight_kg", json!(weight)),
                ("planned_delivery", delivery.clone()),
                ("delivered_at", Value::Null),
                ("updated_at", ts(self.now_us)),
            ]));
            let pickup_id = self.id("pickups");
            load.pickups.push(row(&[
                ("id", json!(pickup_id)),
                ("shipment_id", json!(shipment_id)),
                ("stop_id", json!(first_stop)),
                ("attempt", json!(1)),
                ("status", json!("SCHEDULED")),
                ("reason", Value::Null),
                ("planned_at", ts(departure - 20 * 60_000_000)),
                ("actual_at", Value::Null),
            ]));
            for _ in 0..1 + self.rand(4) {
                let unit_id = self.id("handling_units");
                load.units.push(row(&[
                    ("id", json!(unit_id)),
                    ("shipment_id", json!(shipment_id)),
                    ("trip_id", json!(trip_id)),
                    ("kind", json!(if self.rand(3) == 0 { "PARCEL" } else { "PALLET" })),
                    ("sscc", json!(format!("34012345{unit_id:010}"))),
                    ("weight_kg", json!(20.0 + self.rand(6000) as f64 / 10.0)),
                ]));
            }
        }
        for table_rows in [
            ("legs", &load.legs),
            ("stops", &load.stops),
            ("shipments", &load.shipments),
            ("pickups", &load.pickups),
            ("handling_units", &load.units),
        ] {
            for r in table_rows.1 {
                changes.push(RowChange::Insert { table: table_rows.0, row: r.clone() });
            }
        }
        self.active.push(load);
    }

    /// Set columns of a row; the legacy TMS writes some updates as DELETE + INSERT.
    fn update(&mut self, table: &'static str, current: &mut Row, set: &[(&str, Value)], changes: &mut Vec<RowChange>) {
        let before = current.clone();
        for (k, v) in set {
            current.insert(k.to_string(), v.clone());
        }
        if self.rand(3) == 0 {
            changes.push(RowChange::Delete { table, row: before });
            changes.push(RowChange::Insert { table, row: current.clone() });
        } else {
            changes.push(RowChange::Update { table, before, after: current.clone() });
        }
    }

    fn advance(&mut self, i: usize, changes: &mut Vec<RowChange>) {
        let mut load = self.active.swap_remove(i);
        let now = ts(self.now_us);
        let stops = load.stops.len();
        match load.step {
            0 => {
                // Loading: each pickup is done or fails; a failed pickup is retried next time.
                let mut all_done = true;
                for k in 0..load.pickups.len() {
                    if load.pickups[k].get("status") == Some(&json!("DONE")) {
                        continue;
                    }
                    let mut attempt = load.pickups[k].get("attempt").and_then(Value::as_i64).unwrap_or(1);
                    if load.pickups[k].get("status") == Some(&json!("FAILED")) {
                        attempt += 1;
                    }
                    let failed = self.rand(8) == 0 && attempt < 3;
                    let mut pickup = load.pickups[k].clone();
                    let mut shipment = load.shipments[k].clone();
                    if failed {
                        all_done = false;
                        let reason = FAILURE_REASONS[self.rand(FAILURE_REASONS.len() as u64) as usize];
                        self.update(
                            "pickups",
                            &mut pickup,
                            &[
                                ("attempt", json!(attempt)),
                                ("status", json!("FAILED")),
                                ("reason", json!(reason)),
                                ("actual_at", now.clone()),
                            ],
                            changes,
                        );
                        self.update(
                            "shipments",
                            &mut shipment,
                            &[("status", json!("PICKUP_FAILED")), ("updated_at", now.clone())],
                            changes,
                        );
                    } else {
                        self.update(
                            "pickups",
                            &mut pickup,
                            &[("attempt", json!(attempt)), ("status", json!("DONE")), ("reason", Value::Null), ("actual_at", now.clone())],
                            changes,
                        );
                        // Status first, then the weight measured at the dock: the row twice.
                        self.update("shipments", &mut shipment, &[("status", json!("LOADING")), ("updated_at", now.clone())], changes);
                        let weight = shipment.get("weight_kg").and_then(Value::as_f64).unwrap_or(0.0) + self.rand(50) as f64 / 10.0;
                        self.update("shipments", &mut shipment, &[("weight_kg", json!(weight))], changes);
                    }
                    load.pickups[k] = pickup;
                    load.shipments[k] = shipment;
                }
                if all_done {
                    let mut trip = load.trip.clone();
                    self.update("trips", &mut trip, &[("status", json!("LOADING")), ("updated_at", now.clone())], changes);
                    load.trip = trip;
                    load.step = 1;
                }
            }
            1 => {
                let mut trip = load.trip.clone();
                self.update(
                    "trips",
                    &mut trip,
                    &[("status", json!("DEPARTED")), ("actual_departure", now.clone()), ("updated_at", now.clone())],
                    changes,
                );
                load.trip = trip;
                let mut first = load.stops[0].clone();
                self.update(
                    "stops",
                    &mut first,
                    &[("status", json!("DEPARTED")), ("arrived_at", now.clone()), ("departed_at", now.clone())],
                    changes,
                );
                load.stops[0] = first;
                for k in 0..load.shipments.len() {
                    let mut s = load.shipments[k].clone();
                    self.update("shipments", &mut s, &[("status", json!("DEPARTED")), ("updated_at", now.clone())], changes);
                    load.shipments[k] = s;
                }
                if self.rand(4) == 0 {
                    self.note(&mut load, "Departed with a short delay at the dock", changes);
                }
                if !load.units.is_empty() && self.rand(3) == 0 {
                    self.relabel(&mut load, changes);
                }
                load.step = 2;
            }
            step => {
                // Arrive at the next stop, as late as the drifting delay says.
                let k = (step - 1).min(stops - 1);
                load.delay_min = (load.delay_min + self.rand(31) as i64 - 14).max(-15);
                let planned = load.stops[k].get("planned_at").and_then(Value::as_str).map(str::to_string);
                let arrived = planned.as_deref().and_then(parse_ts).map(|p| p + load.delay_min * 60_000_000).unwrap_or(self.now_us);
                let mut stop = load.stops[k].clone();
                let last = k == stops - 1;
                let status = if last { "ARRIVED" } else { "DEPARTED" };
                let departed = if last { Value::Null } else { ts(arrived + 20 * 60_000_000) };
                self.update(
                    "stops",
                    &mut stop,
                    &[("status", json!(status)), ("arrived_at", ts(arrived)), ("departed_at", departed)],
                    changes,
                );
                load.stops[k] = stop;
                if load.delay_min > 45 && self.rand(2) == 0 {
                    self.note(&mut load, "Traffic jam, customer informed", changes);
                }
                if last {
                    let mut trip = load.trip.clone();
                    self.update("trips", &mut trip, &[("status", json!("DELIVERED")), ("updated_at", now.clone())], changes);
                    load.trip = trip;
                    for j in 0..load.shipments.len() {
                        let mut s = load.shipments[j].clone();
                        self.update(
                            "shipments",
                            &mut s,
                            &[("status", json!("DELIVERED")), ("delivered_at", ts(arrived)), ("updated_at", now.clone())],
                            changes,
                        );
                        load.shipments[j] = s;
                    }
                    self.complete(load, changes);
                    return;
                }
                load.step += 1;
            }
        }
        self.active.push(load);
    }

    /// A damaged label is replaced at departure: the unit gets a new SSCC, and the legacy TMS
    /// keys units by their label number, so this updates the primary key.
    fn relabel(&mut self, load: &mut Load, changes: &mut Vec<RowChange>) {
        let k = self.rand(load.units.len() as u64) as usize;
        let unit_id = self.id("handling_units");
        let before = load.units[k].clone();
        let mut after = before.clone();
        after.insert("id".into(), json!(unit_id));
        after.insert("sscc".into(), json!(format!("34012345{unit_id:010}")));
        changes.push(RowChange::Update { table: "handling_units", before, after: after.clone() });
        load.units[k] = after;
    }

    fn note(&mut self, load: &mut Load, body: &str, changes: &mut Vec<RowChange>) {
        let id = self.id("notes");
        let r = row(&[
            ("id", json!(id)),
            ("trip_id", load.trip.get("id").cloned().unwrap_or(Value::Null)),
            ("author", json!("dispatcher")),
            ("body", json!(body)),
            ("created_at", ts(self.now_us)),
        ]);
        changes.push(RowChange::Insert { table: "notes", row: r.clone() });
        load.notes.push(r);
    }

    /// A delivered load stays for a while, then is archived: all its rows deleted in one
    /// transaction (here, together with the transaction that completes a later load).
    fn complete(&mut self, load: Load, changes: &mut Vec<RowChange>) {
        self.completed.push_back(load);
        if self.completed.len() > self.scenario.scale
            && let Some(old) = self.completed.pop_front()
        {
            for (table, rows) in [
                ("notes", &old.notes),
                ("handling_units", &old.units),
                ("pickups", &old.pickups),
                ("shipments", &old.shipments),
                ("stops", &old.stops),
                ("legs", &old.legs),
            ] {
                for r in rows {
                    changes.push(RowChange::Delete { table, row: r.clone() });
                }
            }
            changes.push(RowChange::Delete { table: "trips", row: old.trip });
        }
    }
}

/// Seconds-precision parse of what [`ts`] writes.
fn parse_ts(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + min * 60 + sec) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for us in [EPOCH_US, 0, 951_782_400_000_000, 4_102_444_799_000_000] {
            assert_eq!(parse_ts(ts(us).as_str().unwrap()), Some(us), "{}", ts(us));
        }
        assert_eq!(ts(EPOCH_US), json!("2026-01-05T06:00:00"));
    }

    #[test]
    fn simulation_is_deterministic_and_loads_progress() {
        let run = || {
            let mut sim = Simulator::new(Scenario { scale: 20, seed: 7 });
            (0..3000).map(|_| sim.next_txn()).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let statuses = |table: &str| {
            a.iter()
                .flat_map(|t| &t.changes)
                .filter_map(|c| match c {
                    RowChange::Update { table: t, after, .. } | RowChange::Insert { table: t, row: after } if *t == table => {
                        after.get("status").and_then(Value::as_str).map(str::to_string)
                    }
                    _ => None,
                })
                .collect::<std::collections::BTreeSet<_>>()
        };
        for s in ["PLANNED", "LOADING", "DEPARTED", "DELIVERED", "PICKUP_FAILED"] {
            assert!(statuses("shipments").contains(s), "shipments reach {s}");
        }
        assert!(statuses("pickups").contains("FAILED"));
        // The legacy TMS's habits: DELETE + INSERT of one key, and archiving deletes.
        let delete_insert = a.iter().any(|t| {
            t.changes.windows(2).any(|w| matches!((&w[0], &w[1]), (RowChange::Delete { row: a, .. }, RowChange::Insert { row: b, .. }) if a.get("id") == b.get("id")))
        });
        assert!(delete_insert);
        assert!(a.iter().any(|t| t.changes.iter().filter(|c| matches!(c, RowChange::Delete { table: "trips", .. })).count() > 0));
        assert!(a.iter().any(|t| t.changes.iter().any(RowChange::updates_key)), "primary keys are updated");
        for pair in a.windows(2) {
            assert!(pair[0].commit_lsn() < pair[1].begin_lsn && pair[1].prev_commit_lsn == pair[0].commit_lsn());
        }
        let events = a[5].debezium(a[5].commit_us / 1000);
        assert!(events.first().unwrap().contains("\"BEGIN\"") && events.last().unwrap().contains("\"END\""));
    }
}

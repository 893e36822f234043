//! What the operator tests share: a seeded random generator, random changes to a table kept
//! as a multiset, tables of small integers, and the check of an operator, tick by tick,
//! against DataFusion's answer over the same contents.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use super::{ChangeBatch, Operator};
use crate::storage::{Store, TickWrites};

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// A generator for test case `seed`; nearby seeds give unrelated sequences.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rows (or changes) with their multiplicities (or weights).
pub type Multiset<R> = BTreeMap<R, i64>;

/// A row of small integers, cast to the column types of a schema by [`int_batch`].
pub type IntRow = Vec<Option<i64>>;

/// `changes` random changes to a table, applied to `contents`: inserts of rows made by `row`
/// and deletes of rows present, weights 1 or 2. Returns the consolidated delta.
pub fn random_delta<R: Ord + Clone>(
    rng: &mut Rng,
    contents: &mut Multiset<R>,
    changes: u64,
    mut row: impl FnMut(&mut Rng) -> R,
) -> Multiset<R> {
    let mut delta: Multiset<R> = BTreeMap::new();
    for _ in 0..changes {
        let weight = 1 + rng.below(2) as i64;
        if contents.is_empty() || rng.below(5) < 3 {
            let row = row(rng);
            *contents.entry(row.clone()).or_default() += weight;
            *delta.entry(row).or_default() += weight;
        } else {
            let i = rng.below(contents.len() as u64) as usize;
            let Some((row, have)) = contents.iter().nth(i).map(|(r, w)| (r.clone(), *w)) else { continue };
            let weight = weight.min(have);
            if have == weight {
                contents.remove(&row);
            } else {
                contents.insert(row.clone(), have - weight);
            }
            *delta.entry(row).or_default() -= weight;
        }
    }
    delta.retain(|_, w| *w != 0);
    delta
}

/// A batch of `schema` from integer rows (cast to the column types).
pub fn int_batch(schema: &SchemaRef, rows: &[&IntRow]) -> RecordBatch {
    let columns = (0..schema.fields().len())
        .map(|c| {
            let ints: Int64Array = rows.iter().map(|r| r[c]).collect();
            arrow::compute::cast(&ints, schema.field(c).data_type()).unwrap()
        })
        .collect();
    RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(rows.len()))).unwrap()
}

/// Integer rows with weights as a change batch of `schema`.
pub fn int_changes(schema: &SchemaRef, delta: &Multiset<IntRow>) -> ChangeBatch {
    let rows: Vec<&IntRow> = delta.keys().collect();
    ChangeBatch::new(int_batch(schema, &rows), delta.values().copied().collect::<Vec<_>>().into())
}

/// Rows as text (independent of the column types), with multiplicities.
pub fn multiset(batch: &ChangeBatch) -> Multiset<Vec<String>> {
    let mut out = BTreeMap::new();
    for i in 0..batch.len() {
        let row = batch.rows.columns().iter().map(|c| ScalarValue::try_from_array(c, i).unwrap().to_string()).collect();
        *out.entry(row).or_default() += batch.weights.value(i);
    }
    out.retain(|_, w| *w != 0);
    out
}

/// DataFusion's answer to `sql` over `tables` (name, schema, integer rows with multiplicities).
pub fn datafusion_answer(
    rt: &tokio::runtime::Runtime,
    tables: &[(&str, SchemaRef, &Multiset<IntRow>)],
    sql: &str,
) -> Multiset<Vec<String>> {
    let ctx = SessionContext::new();
    for (name, schema, contents) in tables {
        // Each row repeated by its multiplicity (`ChangeBatch::expand_positive` without
        // depending on it).
        let rows: Vec<&IntRow> = contents.iter().flat_map(|(row, w)| std::iter::repeat_n(row, *w as usize)).collect();
        let table = MemTable::try_new(schema.clone(), vec![vec![int_batch(schema, &rows)]]).unwrap();
        ctx.register_table(*name, Arc::new(table)).unwrap();
    }
    let batches = rt.block_on(async { ctx.sql(sql).await.unwrap().collect().await.unwrap() });
    let mut out = BTreeMap::new();
    for b in batches {
        for (row, w) in multiset(&ChangeBatch::uniform(b, 1)) {
            *out.entry(row).or_default() += w;
        }
    }
    out
}

/// One tick of a differential test: the operator's inputs, and what its accumulated output
/// must be afterwards, with what to print if it is not.
pub struct Tick {
    pub inputs: Vec<ChangeBatch>,
    pub expected: Multiset<Vec<String>>,
    pub context: String,
}

/// Run `steps` ticks made by `tick` through an operator built by `make`, and compare its
/// accumulated output with the tick's expectation after each one. With `restore_every`,
/// state is committed to a store, the operator is rebuilt from it every `restore_every`
/// steps, and every third tick is first run and aborted (its writes dropped, the operator
/// restored) before it is redone.
pub fn check_ticks<O: Operator>(make: impl Fn() -> O, steps: usize, restore_every: Option<usize>, mut tick: impl FnMut() -> Tick) {
    let dir = tempfile::tempdir().unwrap();
    let store = restore_every.map(|_| Store::open(dir.path()).unwrap());
    let mut op = make();
    let out_schema = op.schema();
    let mut acc = ChangeBatch::empty(out_schema.clone());
    for step in 0..steps {
        let Tick { inputs, expected, context } = tick();
        if let (Some(store), Some(every)) = (&store, restore_every) {
            if step % every == 0 {
                op = make();
                op.restore(store).unwrap();
            }
            if step % 3 == 1 {
                let mut writes = TickWrites::default();
                op.step(inputs.clone(), &mut writes).unwrap();
                op.restore(store).unwrap();
            }
        }
        let mut writes = TickWrites::default();
        let out = op.step(inputs, &mut writes).unwrap();
        if let Some(store) = &store {
            store.commit(writes).unwrap();
        }
        acc = ChangeBatch::concat(&out_schema, &[acc, out]).unwrap().consolidate().unwrap();
        let got = multiset(&acc);
        assert!(got.values().all(|w| *w > 0), "negative multiplicity at step {step}: {got:?}\n{context}");
        assert_eq!(got, expected, "step {step}\n{context}");
    }
}

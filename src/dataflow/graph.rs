//! A dataflow: the operator graph that maintains one materialized view.
//!
//! Nodes are stored in topological order (the planner builds inputs before their users),
//! so one pass over `nodes` runs a step.
//!
//! A step carries many transactions, each with its own logical time ([`StepChanges`]).
//! Most dataflows run once per step over the step's consolidated input: their contents
//! after the step are the same either way. A dataflow whose output feeds a `changes(...)`
//! somewhere is *timed*: it runs once per time that changed its inputs, so the changelog
//! sees every transaction's own before and after.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use arrow::datatypes::SchemaRef;

use super::changelog::ChangelogSpec;
use super::{ChangeBatch, Operator, Result};
use crate::storage::{Store, TickWrites};

/// Where a node reads from: a relation's committed changes, or an earlier node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeInput {
    Relation(u32),
    Node(usize),
}

pub struct Node {
    pub operator: Box<dyn Operator>,
    pub inputs: Vec<NodeInput>,
}

pub struct Dataflow {
    pub id: u32,
    pub nodes: Vec<Node>,
    pub output: NodeInput,
    /// Schemas of the relations the dataflow reads, by relation id.
    pub relation_schemas: HashMap<u32, SchemaRef>,
    /// `changes(...)` inputs, computed from their relation's changes each time.
    pub changelogs: Vec<ChangelogSpec>,
    pub schema: SchemaRef,
    /// Run once per transaction time instead of once per step (set by the engine when a
    /// changelog reads this view, directly or through other views).
    pub timed: bool,
}

/// When a transaction commits, for operators and changelogs that record it.
#[derive(Debug, Clone, Copy)]
pub struct TickInfo {
    pub tick: u64,
    pub committed_at_micros: i64,
}

/// The changes of one step: per relation, the net change of each transaction (time) that
/// changed it, in time order. Times index [`StepChanges::times`].
pub struct StepChanges {
    pub times: Vec<TickInfo>,
    by_relation: HashMap<u32, Vec<(usize, ChangeBatch)>>,
    /// Consolidated changes over all times, computed on first use.
    merged: HashMap<u32, ChangeBatch>,
}

impl StepChanges {
    pub fn new(times: Vec<TickInfo>) -> StepChanges {
        StepChanges { times, by_relation: HashMap::new(), merged: HashMap::new() }
    }

    /// Add the change of `relation` at time `time` (times pushed in increasing order).
    pub fn push(&mut self, relation: u32, time: usize, changes: ChangeBatch) {
        if changes.is_empty() {
            return;
        }
        self.merged.remove(&relation);
        self.by_relation.entry(relation).or_default().push((time, changes));
    }

    pub fn changed(&self, relation: u32) -> bool {
        self.by_relation.contains_key(&relation)
    }

    /// The change of `relation` at one time.
    pub fn at(&self, relation: u32, time: usize) -> Option<&ChangeBatch> {
        let per_time = self.by_relation.get(&relation)?;
        per_time.binary_search_by_key(&time, |(t, _)| *t).ok().map(|i| &per_time[i].1)
    }

    /// The changes of `relation` per time.
    pub fn per_time(&self, relation: u32) -> &[(usize, ChangeBatch)] {
        self.by_relation.get(&relation).map(Vec::as_slice).unwrap_or_default()
    }

    /// The change of `relation` over the whole step, consolidated.
    pub fn merged(&mut self, relation: u32) -> Result<Option<&ChangeBatch>> {
        let Some(per_time) = self.by_relation.get(&relation) else { return Ok(None) };
        let merged = match self.merged.entry(relation) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(match per_time.as_slice() {
                [(_, only)] => only.clone(),
                many => {
                    let batches: Vec<ChangeBatch> = many.iter().map(|(_, c)| c.clone()).collect();
                    ChangeBatch::concat(&batches[0].schema(), &batches)?.consolidate()?
                }
            }),
        };
        Ok(Some(&*merged).filter(|c| !c.is_empty()))
    }

    /// The consolidated change of every relation that changed.
    pub fn into_merged(mut self) -> Result<HashMap<u32, ChangeBatch>> {
        let ids: Vec<u32> = self.by_relation.keys().copied().collect();
        let mut out = HashMap::new();
        for id in ids {
            if let Some(c) = self.merged(id)? {
                out.insert(id, c.clone());
            }
        }
        Ok(out)
    }
}

impl Dataflow {
    /// Relations whose changes feed this dataflow.
    pub fn inputs(&self) -> impl Iterator<Item = u32> + '_ {
        let direct = self.relation_schemas.keys().copied().filter(|id| !self.changelogs.iter().any(|c| c.input == *id));
        direct.chain(self.changelogs.iter().map(|c| c.relation))
    }

    /// Relations read through `changes(...)`: their changes are needed per time.
    pub fn changelog_relations(&self) -> impl Iterator<Item = u32> + '_ {
        self.changelogs.iter().map(|c| c.relation)
    }

    /// Tell every operator the tables' watermarks (see [`Operator::advance_watermarks`]).
    pub fn advance_watermarks(&mut self, watermarks: &HashMap<u32, i64>) {
        for node in &mut self.nodes {
            node.operator.advance_watermarks(watermarks);
        }
    }

    /// The earliest time an operator must run without input (a temporal filter's next expiry).
    pub fn wakeup_at(&self) -> Option<i64> {
        self.nodes.iter().filter_map(|n| n.operator.wakeup_at()).min()
    }

    /// Run one step over `step`'s changes. Returns the output changes by time: one entry
    /// (at the last time) for an untimed dataflow, one per changed time for a timed one.
    pub fn step(&mut self, step: &mut StepChanges, writes: &mut TickWrites) -> Result<Vec<(usize, ChangeBatch)>> {
        let last = step.times.len() - 1;
        let now = step.times[last].committed_at_micros;
        if !self.timed {
            let mut inputs = HashMap::new();
            for id in self.relation_schemas.keys().copied().collect::<Vec<_>>() {
                if let Some(c) = step.merged(id)? {
                    inputs.insert(id, c.clone());
                }
            }
            for spec in &self.changelogs {
                let per_time: Vec<(TickInfo, &ChangeBatch)> =
                    step.per_time(spec.relation).iter().map(|(t, c)| (step.times[*t], c)).collect();
                if !per_time.is_empty() {
                    inputs.insert(spec.input, spec.rows_over(&per_time)?);
                }
            }
            let out = self.run_nodes(&inputs, now, writes, false)?;
            return Ok(if out.is_empty() { Vec::new() } else { vec![(last, out)] });
        }
        let mut times = BTreeSet::new();
        for id in self.inputs() {
            times.extend(step.per_time(id).iter().map(|(t, _)| *t));
        }
        if self.wakeup_at().is_some_and(|t| t <= now) {
            times.insert(last);
        }
        let mut outputs = Vec::new();
        for time in times {
            let mut inputs = HashMap::new();
            for id in self.relation_schemas.keys() {
                if let Some(c) = step.at(*id, time) {
                    inputs.insert(*id, c.clone());
                }
            }
            for spec in &self.changelogs {
                if let Some(c) = step.at(spec.relation, time) {
                    inputs.insert(spec.input, spec.rows(c, step.times[time])?);
                }
            }
            let out = self.run_nodes(&inputs, step.times[time].committed_at_micros, writes, false)?;
            if !out.is_empty() {
                outputs.push((time, out));
            }
        }
        Ok(outputs)
    }

    /// Fill the view from its inputs' current contents (`contents` by relation id), once,
    /// at creation. A `changes(...)` input sees every current row as an insertion.
    pub fn hydrate(&mut self, contents: &HashMap<u32, ChangeBatch>, tick: TickInfo, writes: &mut TickWrites) -> Result<ChangeBatch> {
        let mut inputs = HashMap::new();
        for spec in &self.changelogs {
            if let Some(c) = contents.get(&spec.relation) {
                inputs.insert(spec.input, spec.rows(c, tick)?);
            }
        }
        for id in self.relation_schemas.keys() {
            if let Some(c) = contents.get(id) {
                inputs.entry(*id).or_insert_with(|| c.clone());
            }
        }
        self.run_nodes(&inputs, tick.committed_at_micros, writes, true)
    }

    /// One pass over the nodes with `changes` by input id (relations and changelogs).
    /// With `hydrate`, every node runs even without input. Returns the consolidated output.
    fn run_nodes(
        &mut self,
        changes: &HashMap<u32, ChangeBatch>,
        now_micros: i64,
        writes: &mut TickWrites,
        hydrate: bool,
    ) -> Result<ChangeBatch> {
        let node_schemas: Vec<SchemaRef> = self.nodes.iter().map(|n| n.operator.schema()).collect();
        let mut outputs: Vec<Option<ChangeBatch>> = Vec::with_capacity(self.nodes.len());
        for node in &mut self.nodes {
            node.operator.advance_to(now_micros);
            let mut any = hydrate || node.operator.wakeup_at().is_some_and(|t| t <= now_micros);
            let inputs: Vec<ChangeBatch> = node
                .inputs
                .iter()
                .map(|input| {
                    let batch = match input {
                        NodeInput::Relation(id) => changes.get(id).cloned(),
                        NodeInput::Node(i) => outputs[*i].clone(),
                    };
                    match batch {
                        Some(b) if !b.is_empty() => {
                            any = true;
                            b
                        }
                        _ => ChangeBatch::empty(match input {
                            NodeInput::Relation(id) => self.relation_schemas[id].clone(),
                            NodeInput::Node(i) => node_schemas[*i].clone(),
                        }),
                    }
                })
                .collect();
            let out = if any { Some(node.operator.step(inputs, writes)?) } else { None };
            outputs.push(out);
        }
        let out = match self.output {
            NodeInput::Relation(id) => changes.get(&id).cloned(),
            NodeInput::Node(i) => outputs[i].take(),
        };
        match out {
            Some(b) => b.consolidate(),
            None => Ok(ChangeBatch::empty(self.schema.clone())),
        }
    }

    /// Reload every operator's committed state.
    pub fn restore(&mut self, store: &Store) -> Result<()> {
        for node in &mut self.nodes {
            node.operator.restore(store)?;
        }
        Ok(())
    }
}

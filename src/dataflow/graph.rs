//! A dataflow: the operator graph that maintains one materialized view.
//!
//! Nodes are stored in topological order (the planner builds inputs before their users),
//! so one pass over `nodes` runs a tick.

use std::collections::HashMap;

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
    /// `changes(...)` inputs, computed from their relation's changes each tick.
    pub changelogs: Vec<ChangelogSpec>,
    pub schema: SchemaRef,
}

/// When a tick commits, for operators and changelogs that record it.
#[derive(Debug, Clone, Copy)]
pub struct TickInfo {
    pub tick: u64,
    pub committed_at_micros: i64,
}

impl Dataflow {
    /// Relations whose changes feed this dataflow.
    pub fn inputs(&self) -> impl Iterator<Item = u32> + '_ {
        let direct = self.relation_schemas.keys().copied().filter(|id| !self.changelogs.iter().any(|c| c.input == *id));
        direct.chain(self.changelogs.iter().map(|c| c.relation))
    }

    /// The earliest time an operator must run without input (a temporal filter's next expiry).
    pub fn wakeup_at(&self) -> Option<i64> {
        self.nodes.iter().filter_map(|n| n.operator.wakeup_at()).min()
    }

    /// Run one tick. `changes` holds this tick's consolidated changes per relation.
    /// With `hydrate`, every node runs even without input (used once, at creation).
    /// Returns the consolidated output changes.
    pub fn step(
        &mut self,
        changes: &HashMap<u32, ChangeBatch>,
        tick: TickInfo,
        writes: &mut TickWrites,
        hydrate: bool,
    ) -> Result<ChangeBatch> {
        let mut with_changelogs;
        let changes = if self.changelogs.is_empty() {
            changes
        } else {
            with_changelogs = HashMap::new();
            for spec in &self.changelogs {
                if let Some(c) = changes.get(&spec.relation) {
                    with_changelogs.insert(spec.input, spec.rows(c, tick.tick, tick.committed_at_micros)?);
                }
            }
            for id in self.relation_schemas.keys() {
                if let Some(c) = changes.get(id) {
                    with_changelogs.entry(*id).or_insert_with(|| c.clone());
                }
            }
            &with_changelogs
        };
        let node_schemas: Vec<SchemaRef> = self.nodes.iter().map(|n| n.operator.schema()).collect();
        let mut outputs: Vec<Option<ChangeBatch>> = Vec::with_capacity(self.nodes.len());
        for node in &mut self.nodes {
            node.operator.advance_to(tick.committed_at_micros);
            let mut any = hydrate || node.operator.wakeup_at().is_some_and(|t| t <= tick.committed_at_micros);
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

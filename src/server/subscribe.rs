//! SUBSCRIBE: a relation's changefeed over pgwire, as rows `(tick, [progressed,] diff, columns...)`.
//!
//! The snapshot and the subscription to later ticks are taken under the engine's gate, so
//! every tick appears exactly once. The engine never waits for a subscriber: ticks go
//! through a bounded broadcast channel and a subscriber that falls too far behind is ended
//! with an error instead of stalling ingestion.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::copy::CopyData;
use datafusion_postgres::pgwire::messages::copy::{CopyDone, CopyOutResponse};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::messages::data::RowDescription;
use futures::stream::{self, BoxStream, StreamExt};
use futures::{Sink, SinkExt};
use tokio::sync::broadcast::error::RecvError;

use super::error::SessionError;
use crate::catalog::Relation;
use crate::catalog::RelationKind;
use crate::coordinator::CoordinatorError;
use crate::dataflow::ChangeBatch;
use crate::engine::{Contents, Engine, TickOutput};
use crate::sql::Subscribe;

/// An open changefeed: batches of `(tick, [progressed,] diff, columns...)`.
pub struct Changefeed {
    pub schema: SchemaRef,
    pub batches: BoxStream<'static, PgWireResult<RecordBatch>>,
}

fn feed_schema(relation: &Relation, progress: bool) -> SchemaRef {
    let mut fields = vec![Field::new("tick", DataType::Int64, false)];
    if progress {
        fields.push(Field::new("progressed", DataType::Boolean, false));
    }
    fields.push(Field::new("diff", DataType::Int64, true));
    fields.extend(relation.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)));
    Arc::new(Schema::new(fields))
}

fn feed_batch(schema: &SchemaRef, tick: u64, progress: bool, changes: &ChangeBatch) -> PgWireResult<RecordBatch> {
    let n = changes.len();
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![tick as i64; n]))];
    if progress {
        columns.push(Arc::new(BooleanArray::from(vec![false; n])));
    }
    columns.push(Arc::new(changes.weights.clone()));
    columns.extend(changes.rows.columns().iter().cloned());
    Ok(RecordBatch::try_new(schema.clone(), columns).map_err(SessionError::from)?)
}

/// A row that only says "every change up to `tick` has been sent".
fn progress_batch(schema: &SchemaRef, tick: u64) -> PgWireResult<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match i {
            0 => Arc::new(Int64Array::from(vec![tick as i64])) as ArrayRef,
            1 => Arc::new(BooleanArray::from(vec![true])) as ArrayRef,
            _ => arrow::array::new_null_array(f.data_type(), 1),
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns).map_err(SessionError::from)?)
}

/// Open a changefeed on `request.name`.
/// The row schema `SUBSCRIBE` returns for `request`, without opening it (for Describe).
pub fn schema_of(engine: &Engine, request: &Subscribe) -> Option<SchemaRef> {
    let catalog = engine.catalog();
    catalog.get(&request.name).map(|relation| feed_schema(relation, request.progress))
}

pub async fn open(engine: &Engine, request: &Subscribe) -> PgWireResult<Changefeed> {
    let relation = {
        let catalog = engine.catalog();
        catalog.get(&request.name).cloned()
    }
    .ok_or_else(|| CoordinatorError::UndefinedObject { kind: RelationKind::Table, name: request.name.clone() })?;
    if relation.kind == RelationKind::View {
        return Err(CoordinatorError::Unsupported(format!(
            "a changefeed of view \"{}\" (its rows are not stored; subscribe to a materialized view)",
            relation.name
        ))
        .into());
    }
    let schema = feed_schema(&relation, request.progress);
    let contents =
        Contents::new(relation.id, &relation.name, relation.schema.clone(), &relation.primary_key).map_err(CoordinatorError::Engine)?;
    let (snapshot, receiver, tick) = {
        let _gate = engine.read_snapshot().await;
        let receiver = engine.subscribe();
        let tick = engine.current_tick();
        let snapshot = if request.snapshot { Some(contents.scan(engine.store()).map_err(CoordinatorError::Engine)?) } else { None };
        (snapshot, receiver, tick)
    };
    let mut first = Vec::new();
    if let Some(s) = snapshot
        && !s.is_empty()
    {
        first.push(feed_batch(&schema, tick, request.progress, &s));
    }
    if request.progress {
        first.push(progress_batch(&schema, tick));
    }
    let state = (receiver, schema.clone(), relation.id, request.progress);
    let later = stream::unfold(Some(state), |state| async move {
        let (mut receiver, schema, id, progress) = state?;
        loop {
            match receiver.recv().await {
                Ok(TickOutput { tick, changes, .. }) => {
                    let mut out = Vec::new();
                    if let Some(c) = changes.get(&id) {
                        out.push(feed_batch(&schema, tick, progress, c));
                    }
                    if progress {
                        out.push(progress_batch(&schema, tick));
                    }
                    if !out.is_empty() {
                        return Some((stream::iter(out), Some((receiver, schema, id, progress))));
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let err = SessionError::SubscriberLagged(n).into();
                    return Some((stream::iter(vec![Err(err)]), None));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .flatten();
    Ok(Changefeed { schema, batches: stream::iter(first).chain(later).boxed() })
}

fn pg_fields(schema: &SchemaRef) -> PgWireResult<Arc<Vec<FieldInfo>>> {
    Ok(Arc::new(arrow_schema_to_pg_fields(schema, &Format::UnifiedText, None)?))
}

fn data_rows(fields: Arc<Vec<FieldInfo>>, batch: PgWireResult<RecordBatch>) -> Vec<PgWireResult<DataRow>> {
    match batch {
        Ok(b) => encode_recordbatch(fields, b).collect(),
        Err(e) => vec![Err(e)],
    }
}

/// Write one backend message per item and flush after each batch: pgwire's own response
/// path coalesces messages until the statement ends, which a changefeed never does.
async fn deliver<C>(client: &mut C, messages: Vec<PgWireBackendMessage>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for m in messages {
        client.feed(m).await?;
    }
    client.flush().await?;
    Ok(())
}

/// `SUBSCRIBE ...` as a query whose rows never end (simple protocol).
pub async fn stream_query<C>(client: &mut C, mut feed: Changefeed) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let fields = pg_fields(&feed.schema)?;
    let description = RowDescription::new(fields.iter().map(Into::into).collect());
    deliver(client, vec![PgWireBackendMessage::RowDescription(description)]).await?;
    while let Some(batch) = feed.batches.next().await {
        let rows = data_rows(fields.clone(), batch).into_iter().map(|r| r.map(PgWireBackendMessage::DataRow));
        deliver(client, rows.collect::<PgWireResult<Vec<_>>>()?).await?;
    }
    Ok(Response::Execution(Tag::new("SUBSCRIBE")))
}

/// `COPY (SUBSCRIBE ...) TO STDOUT`: text-format COPY data, one line per row.
pub async fn stream_copy<C>(client: &mut C, mut feed: Changefeed) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let fields = pg_fields(&feed.schema)?;
    let start = CopyOutResponse::new(0, fields.len() as i16, vec![0; fields.len()]);
    deliver(client, vec![PgWireBackendMessage::CopyOutResponse(start)]).await?;
    let mut count = 0;
    while let Some(batch) = feed.batches.next().await {
        let mut lines = Vec::new();
        for row in data_rows(fields.clone(), batch) {
            lines.push(PgWireBackendMessage::CopyData(CopyData::new(copy_text_line(&row?).into())));
        }
        count += lines.len();
        deliver(client, lines).await?;
    }
    deliver(client, vec![PgWireBackendMessage::CopyDone(CopyDone::new())]).await?;
    Ok(Response::Execution(Tag::new("COPY").with_rows(count)))
}

/// Turn a text-format DataRow into a COPY text line (tab-separated, `\N` for NULL).
fn copy_text_line(row: &DataRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.data.len() + 8);
    let mut data: &[u8] = &row.data;
    for i in 0..row.field_count {
        if i > 0 {
            out.push(b'\t');
        }
        let len = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        data = &data[4..];
        if len < 0 {
            out.extend_from_slice(b"\\N");
            continue;
        }
        let (value, rest) = data.split_at(len as usize);
        data = rest;
        for &b in value {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                other => out.push(other),
            }
        }
    }
    out.push(b'\n');
    out
}

/// A `DECLARE ... CURSOR FOR SUBSCRIBE` of one session, read with `FETCH`.
pub struct SubscribeCursor {
    feed: Changefeed,
    buffered: VecDeque<RecordBatch>,
}

impl SubscribeCursor {
    pub fn new(feed: Changefeed) -> SubscribeCursor {
        SubscribeCursor { feed, buffered: VecDeque::new() }
    }

    /// The schema of the rows `fetch` returns.
    pub fn schema(&self) -> SchemaRef {
        self.feed.schema.clone()
    }

    /// Up to `count` rows (all available with `None`). Waits for the first row up to
    /// `timeout` (forever without one), then takes only what is already there.
    pub async fn fetch(&mut self, count: Option<u64>, timeout: Option<Duration>) -> PgWireResult<Response> {
        let limit = count.unwrap_or(u64::MAX) as usize;
        let mut taken: Vec<RecordBatch> = Vec::new();
        let mut rows = 0usize;
        if self.buffered.is_empty() {
            let next = match timeout {
                Some(t) => tokio::time::timeout(t, self.feed.batches.next()).await.unwrap_or(None),
                None => self.feed.batches.next().await,
            };
            if let Some(b) = next {
                self.buffered.push_back(b?);
            }
        }
        loop {
            while rows < limit {
                let Some(b) = self.buffered.pop_front() else { break };
                let take = (limit - rows).min(b.num_rows());
                if take < b.num_rows() {
                    self.buffered.push_front(b.slice(take, b.num_rows() - take));
                }
                rows += take;
                taken.push(b.slice(0, take));
            }
            if rows >= limit {
                break;
            }
            // Drain what is ready without waiting.
            match futures::FutureExt::now_or_never(self.feed.batches.next()) {
                Some(Some(b)) => self.buffered.push_back(b?),
                _ => break,
            }
        }
        let fields = pg_fields(&self.feed.schema)?;
        let rows: Vec<PgWireResult<DataRow>> = taken.into_iter().flat_map(|b| data_rows(fields.clone(), Ok(b))).collect();
        Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows))))
    }
}

//! Transaction identity: which part of a connector's `transaction.id` names one source
//! transaction.
//!
//! Debezium's Postgres connector writes `transaction.id` as `"<txId>:<LSN>"`, where the LSN is
//! that of the record at hand: it differs from event to event and between the BEGIN and END
//! markers of one transaction (events `"571:33000"`, `"571:33500"`, END `"571:34000"`). The
//! transaction is the txId part. Other connectors (MySQL GTIDs or binlog positions, SQL Server
//! commit LSNs, Oracle XIDs, MongoDB sessions) write the same id on every record of a
//! transaction, and it is used as it is.
//!
//! Markers carry no `source` block, so a marker id of the Postgres shape (`digits:digits`) is
//! keyed by its txId part unless the events seen so far came from another connector.

/// Keys `transaction.id`s by transaction, learning from events how their connector writes them.
#[derive(Debug, Default)]
pub(super) struct TxnKeys {
    /// Whether the last event with a transaction id was keyed the Postgres way (`None`: no such
    /// event yet).
    postgres: Option<bool>,
}

impl TxnKeys {
    /// The key of an event's transaction: the txId part for Postgres (`source.connector` is
    /// `postgresql`, or the id is `digits:digits` and `source.txId` is its first part), the
    /// whole id otherwise.
    pub(super) fn of_event<'a>(&mut self, id: &'a str, connector: Option<&str>, source_tx_id: Option<i64>) -> &'a str {
        let key = match postgres_tx_part(id) {
            Some(tx) if connector == Some("postgresql") || source_tx_id.is_some_and(|t| tx.parse() == Ok(t)) => tx,
            _ => id,
        };
        self.postgres = Some(key.len() < id.len());
        key
    }

    /// The key of a BEGIN/END marker's transaction (see the module doc).
    pub(super) fn of_marker<'a>(&self, id: &'a str) -> &'a str {
        match postgres_tx_part(id) {
            Some(tx) if self.postgres != Some(false) => tx,
            _ => id,
        }
    }
}

/// The txId part of an id of the Postgres shape `digits:digits`.
pub(super) fn postgres_tx_part(id: &str) -> Option<&str> {
    let (tx, lsn) = id.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(tx) && digits(lsn)).then_some(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_ids_are_keyed_by_their_txid() {
        let mut keys = TxnKeys::default();
        assert_eq!(keys.of_marker("571:33000"), "571");
        assert_eq!(keys.of_event("571:33500", Some("postgresql"), Some(571)), "571");
        // Without a connector name, the txId must match.
        assert_eq!(keys.of_event("571:33500", None, Some(571)), "571");
        assert_eq!(keys.of_event("571:33500", None, Some(572)), "571:33500");
        assert_eq!(keys.of_event("571:33500", None, None), "571:33500");
        assert_eq!(keys.of_event("tx-1", Some("postgresql"), Some(1)), "tx-1");
    }

    #[test]
    fn other_connectors_keep_their_ids() {
        let mut keys = TxnKeys::default();
        let gtid = "3E11FA47-71CA-11E1-9E33-C80AA9429562:23";
        assert_eq!(keys.of_event(gtid, Some("mysql"), None), gtid);
        assert_eq!(keys.of_marker(gtid), gtid);
        assert_eq!(keys.of_event("file.000003:1234", Some("mysql"), None), "file.000003:1234");
        assert_eq!(keys.of_event("00000025:00000d08:0025", Some("sqlserver"), None), "00000025:00000d08:0025");
        // Once events say ids are not Postgres ids, markers of that shape are not split either.
        assert_eq!(keys.of_event("12:34", Some("informix"), None), "12:34");
        assert_eq!(keys.of_marker("12:34"), "12:34");
        assert_eq!(postgres_tx_part("12:"), None);
        assert_eq!(postgres_tx_part(":12"), None);
        assert_eq!(postgres_tx_part("1:2:3"), None);
    }
}

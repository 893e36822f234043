//! What a column's declared SQL type says beyond its Arrow type, kept as Arrow field metadata
//! so that it travels with the schema: the Postgres type of a text column (`varchar`,
//! `jsonb`) and the type modifier (`atttypmod`) of `VARCHAR(40)`, `NUMERIC(12,2)`,
//! `TIMESTAMP(3)`. `pg_attribute`, `information_schema.columns` and RowDescription report
//! them (the keys are the ones `vendor/arrow-pg` reads); INSERT and UPDATE enforce a
//! `VARCHAR(n)` length.

use std::collections::HashMap;

use arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{CharacterLength, DataType as SqlType, ExactNumberInfo};

/// The Postgres type of a text column other than `text`: `varchar`, `jsonb` or `uuid`.
///
/// A `uuid` column is text in its canonical form (lowercase, `8-4-4-4-12`), checked and
/// normalized on the way in ([`canonical_uuid`]). DataFusion has no uuid type; as text the
/// column compares, sorts (the canonical text sorts as the 16 bytes do), groups and joins
/// with every operator Velocity has, prints as Postgres prints it, and only the wire
/// (`uuid`, OID 2950, 16 bytes in binary format) and the catalogs need to know.
pub const PG_TYPE_KEY: &str = "pg.type";
/// The column's `atttypmod`, as Postgres packs it.
pub const PG_TYPMOD_KEY: &str = "pg.typmod";
/// The `pg_class.oid` of the table or materialized view a column is read from.
pub const PG_TABLE_OID_KEY: &str = "pg.table_oid";
/// The column's `attnum` in that relation (1-based).
pub const PG_ATTNUM_KEY: &str = "pg.attnum";
/// Postgres' `VARHDRSZ`, added to the declared length of `varchar(n)` and to numeric's
/// packed precision and scale.
const VARHDRSZ: i64 = 4;

/// The metadata a column declared as `sql_type` carries besides its Arrow type.
pub fn metadata(sql_type: &SqlType) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    let typmod = match sql_type {
        SqlType::Varchar(length) | SqlType::CharacterVarying(length) => {
            meta.insert(PG_TYPE_KEY.to_string(), "varchar".to_string());
            match length {
                Some(CharacterLength::IntegerLength { length, .. }) => Some(*length as i64 + VARHDRSZ),
                _ => None,
            }
        }
        SqlType::JSONB => {
            meta.insert(PG_TYPE_KEY.to_string(), "jsonb".to_string());
            None
        }
        SqlType::Uuid => {
            meta.insert(PG_TYPE_KEY.to_string(), "uuid".to_string());
            None
        }
        SqlType::Numeric(info) | SqlType::Decimal(info) => match info {
            ExactNumberInfo::None => None,
            ExactNumberInfo::Precision(p) => Some(((*p as i64) << 16) + VARHDRSZ),
            ExactNumberInfo::PrecisionAndScale(p, s) => Some((((*p as i64) << 16) | (*s & 0x7ff)) + VARHDRSZ),
        },
        SqlType::Timestamp(Some(p), _) | SqlType::Time(Some(p), _) => Some(*p as i64),
        _ => None,
    };
    if let Some(typmod) = typmod {
        meta.insert(PG_TYPMOD_KEY.to_string(), typmod.to_string());
    }
    meta
}

/// `field` with the metadata of a column declared as `sql_type` added.
pub fn with_declared_type(field: Field, sql_type: &SqlType) -> Field {
    let extra = metadata(sql_type);
    if extra.is_empty() {
        return field;
    }
    let mut meta = field.metadata().clone();
    meta.extend(extra);
    field.with_metadata(meta)
}

/// `schema` with each field marked as column `attnum` of the relation with `pg_class.oid`
/// `table_oid`: RowDescription then carries them for a column a query reads unchanged
/// (DataFusion keeps a field's metadata through column references, not through
/// expressions), as Postgres does, and pgjdbc's `getTableName` finds the table.
pub fn with_origin(schema: &Schema, table_oid: u32) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut meta = f.metadata().clone();
            meta.insert(PG_TABLE_OID_KEY.to_string(), table_oid.to_string());
            meta.insert(PG_ATTNUM_KEY.to_string(), (i + 1).to_string());
            f.as_ref().clone().with_metadata(meta)
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The column's `atttypmod`, -1 (none) unless its declared type had one.
pub fn typmod(field: &Field) -> i32 {
    field.metadata().get(PG_TYPMOD_KEY).and_then(|t| t.parse().ok()).unwrap_or(-1)
}

/// `varchar` or `jsonb` for columns declared so, `None` for others.
pub fn pg_type_name(field: &Field) -> Option<&str> {
    field.metadata().get(PG_TYPE_KEY).map(String::as_str)
}

/// Whether `field` is a `uuid` column.
pub fn is_uuid(field: &Field) -> bool {
    pg_type_name(field) == Some("uuid")
}

/// A uuid's text in Postgres' output form, if `text` is one in any form Postgres reads:
/// 32 hex digits, upper or lower case, optionally in braces, with a hyphen allowed after
/// any group of four digits.
pub fn canonical_uuid(text: &str) -> Option<String> {
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut digits = String::with_capacity(32);
    let mut after_hyphen = false;
    for c in inner.chars() {
        if c == '-' {
            if digits.is_empty() || !digits.len().is_multiple_of(4) || after_hyphen || digits.len() == 32 {
                return None;
            }
            after_hyphen = true;
        } else if c.is_ascii_hexdigit() && digits.len() < 32 {
            digits.push(c.to_ascii_lowercase());
            after_hyphen = false;
        } else {
            return None;
        }
    }
    if digits.len() != 32 || after_hyphen {
        return None;
    }
    Some(format!("{}-{}-{}-{}-{}", &digits[..8], &digits[8..12], &digits[12..16], &digits[16..20], &digits[20..]))
}

/// The declared length of a `VARCHAR(n)` column.
pub fn varchar_length(field: &Field) -> Option<usize> {
    if pg_type_name(field) != Some("varchar") {
        return None;
    }
    usize::try_from(typmod(field) as i64 - VARHDRSZ).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typmod_of(sql: &str) -> i32 {
        let stmt = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            &format!("CREATE TABLE t (c {sql})"),
        )
        .expect("parses")
        .remove(0);
        let datafusion::sql::sqlparser::ast::Statement::CreateTable(ct) = stmt else { panic!("create table") };
        typmod(&with_declared_type(Field::new("c", arrow::datatypes::DataType::Utf8, true), &ct.columns[0].data_type))
    }

    #[test]
    fn uuids_as_postgres_reads_them() {
        // Forms Postgres 15 accepts (`SELECT '...'::uuid`) and refuses (22P02).
        let canonical = Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string());
        for text in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        ] {
            assert_eq!(canonical_uuid(text), canonical, "{text}");
        }
        for text in [
            "",
            "a0eebc99",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0e-ebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc99--9c0b4ef8bb6d6bb9bd380a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(canonical_uuid(text), None, "{text}");
        }
    }

    #[test]
    fn typmods_as_postgres_packs_them() {
        // pg_attribute.atttypmod on Postgres 15 for the same declarations.
        assert_eq!(typmod_of("VARCHAR(40)"), 44);
        assert_eq!(typmod_of("CHARACTER VARYING(40)"), 44);
        assert_eq!(typmod_of("NUMERIC(12,2)"), 786438);
        assert_eq!(typmod_of("NUMERIC(12)"), 786436);
        assert_eq!(typmod_of("TIMESTAMP(3)"), 3);
        assert_eq!(typmod_of("TIMESTAMPTZ(0)"), 0);
        assert_eq!(typmod_of("TIME(2)"), 2);
        assert_eq!(typmod_of("NUMERIC"), -1);
        assert_eq!(typmod_of("TEXT"), -1);
        assert_eq!(typmod_of("VARCHAR"), -1);
    }
}

//! What a column's declared SQL type says beyond its Arrow type, kept as Arrow field metadata
//! so that it travels with the schema: the Postgres type of a text column (`varchar`,
//! `jsonb`) and the type modifier (`atttypmod`) of `VARCHAR(40)`, `NUMERIC(12,2)`,
//! `TIMESTAMP(3)`. `pg_attribute`, `information_schema.columns` and RowDescription report
//! them (the keys are the ones `vendor/arrow-pg` reads); INSERT and UPDATE enforce a
//! `VARCHAR(n)` length.

use std::collections::HashMap;

use arrow::datatypes::Field;
use datafusion::sql::sqlparser::ast::{CharacterLength, DataType as SqlType, ExactNumberInfo};

/// The Postgres type of a text column other than `text`: `varchar` or `jsonb`.
pub const PG_TYPE_KEY: &str = "pg.type";
/// The column's `atttypmod`, as Postgres packs it.
pub const PG_TYPMOD_KEY: &str = "pg.typmod";
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

/// The column's `atttypmod`, -1 (none) unless its declared type had one.
pub fn typmod(field: &Field) -> i32 {
    field.metadata().get(PG_TYPMOD_KEY).and_then(|t| t.parse().ok()).unwrap_or(-1)
}

/// `varchar` or `jsonb` for columns declared so, `None` for others.
pub fn pg_type_name(field: &Field) -> Option<&str> {
    field.metadata().get(PG_TYPE_KEY).map(String::as_str)
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

//! Catalog queries that known clients send verbatim and DataFusion cannot plan, rewritten
//! to equivalents it can (as datafusion-postgres does for the queries it knows).

use std::borrow::Cow;

/// `(client, exact text, replacement)`.
const REWRITES: &[(&str, &str, &str)] = &[
    // psql `\d+`: Velocity has no storage options, so the option list is empty.
    (
        "psql \\d+",
        "pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')",
        "''",
    ),
];

/// `sql` with every known client query fragment replaced.
pub fn rewrite(sql: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(sql);
    for (_, from, to) in REWRITES {
        if out.contains(from) {
            out = Cow::Owned(out.replace(from, to));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn psql_describe_plus_options() {
        let q = "SELECT c.relispartition, pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')\n, c.reltablespace";
        assert_eq!(super::rewrite(q), "SELECT c.relispartition, ''\n, c.reltablespace");
    }
}

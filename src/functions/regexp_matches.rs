//! `regexp_matches(string, pattern [, flags])`: Postgres' set-returning regular expression
//! match, one row per match, each the `text[]` of the pattern's capture groups (the whole
//! match when it has none; NULL for a group that took no part). Without the `g` flag, the
//! first match only (or no row); with it, every match. Flags as in Postgres: `g`, `i`/`c`
//! (case), `n`/`m` (newline-sensitive: `.` and `[^...]` stop at newlines, `^`/`$` match at
//! lines), `s` (the default: `.` matches newlines too), `x` (expanded syntax). The pattern is
//! read by Rust's `regex` crate, whose syntax is Postgres' for the usual patterns (no
//! back-references).
//!
//! Like the set-returning JSON functions, it is a scalar function returning the rows as a
//! list, turned into an `Unnest` by [`super::json_elements::JsonElementsToUnnest`]: ad hoc
//! and in materialized views (a stateless flat map).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, exec_err, not_impl_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use regex::{Regex, RegexBuilder};

pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(RegexpMatches::new(false)));
    ctx.register_udf(ScalarUDF::from(RegexpMatches::new(true)));
}

/// The list function a call of `name` is rewritten to.
pub fn list_of(name: &str) -> Option<ScalarUDF> {
    (name == NAME).then(|| ScalarUDF::from(RegexpMatches::new(true)))
}

const NAME: &str = "regexp_matches";

/// `regexp_matches` as planned (one `text[]` per row), or the list of all of a row's matches
/// it is rewritten to (`velocity_list_regexp_matches`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct RegexpMatches {
    list: bool,
    name: String,
    signature: Signature,
}

impl RegexpMatches {
    fn new(list: bool) -> RegexpMatches {
        let name = if list { format!("velocity_list_{NAME}") } else { NAME.to_string() };
        RegexpMatches { list, name, signature: Signature::user_defined(Volatility::Immutable) }
    }
}

fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The regular expression `pattern` with Postgres `flags`, and whether `g` was given.
fn compile(pattern: &str, flags: &str) -> Result<(Regex, bool)> {
    let mut builder = RegexBuilder::new(pattern);
    builder.dot_matches_new_line(true);
    let mut global = false;
    for flag in flags.chars() {
        match flag {
            'g' => global = true,
            'i' => _ = builder.case_insensitive(true),
            'c' => _ = builder.case_insensitive(false),
            'n' | 'm' => _ = builder.dot_matches_new_line(false).multi_line(true),
            's' => _ = builder.dot_matches_new_line(true).multi_line(false),
            'x' => _ = builder.ignore_whitespace(true),
            'e' | 'q' | 'b' | 'p' | 'w' | 't' => return not_impl_err!("regular expression option \"{flag}\""),
            other => return exec_err!("invalid regular expression option: \"{other}\""),
        }
    }
    match builder.build() {
        Ok(re) => Ok((re, global)),
        Err(e) => exec_err!("invalid regular expression: {e}"),
    }
}

/// Append the matches of `re` in `text` (each a list of groups) to `out`.
fn append_matches(re: &Regex, global: bool, text: &str, out: &mut ListBuilder<StringBuilder>) {
    let groups = re.captures_len();
    for captures in re.captures_iter(text).take(if global { usize::MAX } else { 1 }) {
        if groups == 1 {
            out.values().append_option(captures.get(0).map(|m| m.as_str()));
        } else {
            for i in 1..groups {
                out.values().append_option(captures.get(i).map(|m| m.as_str()));
            }
        }
        out.append(true);
    }
}

impl ScalarUDFImpl for RegexpMatches {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=3).contains(&arg_types.len()) {
            return plan_err!("No function matches the given name and argument types regexp_matches() with {} arguments", arg_types.len());
        }
        Ok(vec![DataType::Utf8; arg_types.len()])
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(if self.list { DataType::List(Arc::new(Field::new("item", text_array(), true))) } else { text_array() })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !self.list {
            // Only reached where the rewrite does not apply (in WHERE, say), which Postgres
            // refuses too.
            return not_impl_err!("regexp_matches() outside a select list");
        }
        let n = args.number_rows;
        let columns = args.args.iter().map(|a| a.to_array(n)).collect::<Result<Vec<ArrayRef>>>()?;
        let text = columns[0].as_string::<i32>();
        let pattern = columns[1].as_string::<i32>();
        let flags = columns.get(2).map(|f| f.as_string::<i32>());
        let item = Arc::new(Field::new("item", text_array(), true));
        let mut out =
            ListBuilder::new(ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("item", DataType::Utf8, true))))
                .with_field(item);
        let mut compiled: Option<(String, String, Regex, bool)> = None;
        for row in 0..n {
            let flag = flags.map_or(Some(""), |f| f.is_valid(row).then(|| f.value(row)));
            let (Some(flag), true, true) = (flag, text.is_valid(row), pattern.is_valid(row)) else {
                out.append_null();
                continue;
            };
            let p = pattern.value(row);
            let fresh = !matches!(&compiled, Some((cp, cf, _, _)) if cp == p && cf == flag);
            if fresh {
                let (re, global) = compile(p, flag)?;
                compiled = Some((p.to_string(), flag.to_string(), re, global));
            }
            let Some((_, _, re, global)) = &compiled else { continue };
            append_matches(re, *global, text.value(row), out.values());
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(text: &str, pattern: &str, flags: &str) -> Vec<Vec<Option<String>>> {
        let (re, global) = compile(pattern, flags).expect("compiles");
        let mut out = ListBuilder::new(StringBuilder::new());
        append_matches(&re, global, text, &mut out);
        let lists = out.finish();
        lists
            .iter()
            .map(|l| {
                let l = l.expect("a match");
                l.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect()
            })
            .collect()
    }

    #[test]
    fn matches_as_postgres_does() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(matches("foobarbequebaz", "(bar)(beque)", ""), vec![vec![s("bar"), s("beque")]]);
        assert_eq!(matches("foobarbequebazbar", "ba.", "g"), vec![vec![s("bar")], vec![s("baz")], vec![s("bar")]]);
        assert_eq!(matches("abc", "(x)?b", ""), vec![vec![None]]);
        assert_eq!(matches("ABC", "b", "i"), vec![vec![s("B")]]);
        assert!(matches("abc", "z", "g").is_empty());
        assert!(compile("a", "z").is_err());
    }
}

//! `WITH (name = value, ...)` options of CREATE SOURCE, CREATE SINK and tables fed by a source.
//!
//! One type reads them all, so every statement finds, requires, parses and rejects options the
//! same way, and says which option is wrong in a typed error.

use std::str::FromStr;

/// Options as written, in order; names lower-cased (SQL identifiers), values as written. When
/// an option is given twice, the first one counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WithOptions {
    options: Vec<(String, String)>,
}

/// What is wrong with an option. The message names the option and is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A required option is absent.
    #[error("{message}")]
    Missing { option: String, message: String },
    /// An option's value is not acceptable.
    #[error("{message}")]
    Invalid { option: String, message: String },
    /// An option the statement does not know.
    #[error("unknown {context} option \"{option}\" (expected {expected})")]
    Unknown { option: String, context: String, expected: String },
}

impl OptionError {
    /// A bad value of `option`, explained by `message`.
    pub fn invalid(option: &str, message: impl Into<String>) -> OptionError {
        OptionError::Invalid { option: option.to_string(), message: message.into() }
    }

    /// The option at fault.
    pub fn option(&self) -> &str {
        match self {
            OptionError::Missing { option, .. } | OptionError::Invalid { option, .. } | OptionError::Unknown { option, .. } => option,
        }
    }
}

/// The client-facing message, for callers that report errors as text.
impl From<OptionError> for String {
    fn from(e: OptionError) -> String {
        e.to_string()
    }
}

impl WithOptions {
    pub fn new(options: impl IntoIterator<Item = (String, String)>) -> WithOptions {
        WithOptions { options: options.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }

    /// The options in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or [`OptionError::Missing`] with `message` (which says what needs it
    /// and what to write, e.g. `a Kafka sink needs topic = '...'`).
    pub fn require(&self, key: &str, message: &str) -> Result<&str, OptionError> {
        self.get(key).ok_or_else(|| OptionError::Missing { option: key.to_string(), message: message.to_string() })
    }

    /// The value of `key` parsed as a `T`; `expected` describes a valid value for the error
    /// (`key must be <expected>, not "<value>"`).
    pub fn parse<T: FromStr>(&self, key: &str, expected: &str) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|v| v.parse::<T>().map_err(|_| OptionError::invalid(key, format!("{key} must be {expected}, not \"{v}\""))))
            .transpose()
    }

    /// Options named `<prefix><name>`, as `(name, value)` (`properties.linger.ms`).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.iter().filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v)))
    }

    /// Fail on the first option not in `allowed`; an entry ending in `*` allows every option
    /// with that prefix (`properties.*`). `context` names what takes the options (`sink`).
    pub fn reject_unknown(&self, context: &str, allowed: &[&str]) -> Result<(), OptionError> {
        let known = |k: &str| allowed.iter().any(|a| a.strip_suffix('*').map_or(*a == k, |prefix| k.starts_with(prefix)));
        match self.iter().find(|(k, _)| !known(k)) {
            None => Ok(()),
            Some((k, _)) => Err(OptionError::Unknown { option: k.to_string(), context: context.to_string(), expected: allowed.join(", ") }),
        }
    }
}

impl From<Vec<(String, String)>> for WithOptions {
    fn from(options: Vec<(String, String)>) -> WithOptions {
        WithOptions::new(options)
    }
}

impl From<&[(String, String)]> for WithOptions {
    fn from(options: &[(String, String)]) -> WithOptions {
        WithOptions::new(options.iter().cloned())
    }
}

impl From<&Vec<(String, String)>> for WithOptions {
    fn from(options: &Vec<(String, String)>) -> WithOptions {
        WithOptions::from(options.as_slice())
    }
}

impl From<&WithOptions> for WithOptions {
    fn from(options: &WithOptions) -> WithOptions {
        options.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> WithOptions {
        WithOptions::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn get_require_and_parse() {
        let o = options(&[("Topic", "t"), ("partitions", "3"), ("topic", "second"), ("rate", "fast")]);
        assert_eq!(o.get("topic"), Some("t"));
        assert_eq!(o.get("brokers"), None);
        assert_eq!(o.require("topic", "needs topic"), Ok("t"));
        let missing = o.require("brokers", "a Kafka sink needs brokers = 'host:port'").unwrap_err();
        assert_eq!((missing.option(), missing.to_string().as_str()), ("brokers", "a Kafka sink needs brokers = 'host:port'"));
        assert_eq!(o.parse::<i32>("partitions", "a number"), Ok(Some(3)));
        assert_eq!(o.parse::<i32>("absent", "a number"), Ok(None));
        let bad = o.parse::<f64>("rate", "a number").unwrap_err();
        assert_eq!(bad, OptionError::invalid("rate", "rate must be a number, not \"fast\""));
    }

    #[test]
    fn prefixes_and_unknown_options() {
        let o = options(&[("connector", "kafka"), ("properties.linger.ms", "5"), ("colour", "red")]);
        assert_eq!(o.with_prefix("properties.").collect::<Vec<_>>(), vec![("linger.ms", "5")]);
        assert_eq!(o.reject_unknown("sink", &["connector", "properties.*", "colour"]), Ok(()));
        let e = o.reject_unknown("sink", &["connector", "properties.*"]).unwrap_err();
        assert_eq!(e.option(), "colour");
        assert_eq!(e.to_string(), "unknown sink option \"colour\" (expected connector, properties.*)");
        let slice: &[(String, String)] = &[("A".into(), "1".into())];
        assert_eq!(WithOptions::from(slice).get("a"), Some("1"));
    }
}

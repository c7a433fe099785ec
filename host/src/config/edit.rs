//! Reading and changing single keys of `config.toml` by dotted path (`delivery.linger_ms`).
//!
//! `set` edits the file as a document, so comments and layout survive; the result is parsed and
//! validated in full before it replaces the file (atomically), so an unknown key or a wrong type
//! leaves the file exactly as it was.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, Value};

use super::{Config, ConfigError};
use crate::home::write_atomic;

/// The effective value of `key` (the file's, or the default).
pub fn get(config: &Config, key: &str, path: &Path) -> Result<toml::Value, ConfigError> {
    // The built-in plugins have their (off) settings whether or not the file mentions them.
    let mut config = config.clone();
    for builtin in crate::plugins::builtin::BUILTINS {
        config.plugins.entry(builtin.name.to_owned()).or_default();
    }
    let config = &config;
    let tree = toml::Value::try_from(config).map_err(|e| invalid(path, e.to_string()))?;
    let mut node = &tree;
    for part in key.split('.') {
        node = node
            .get(part)
            .ok_or_else(|| unknown_key(config, key, path))?;
    }
    Ok(node.clone())
}

/// How `set` reads a value given on the command line: TOML if it parses as TOML, a plain string
/// otherwise.
pub fn value_of(raw: &str) -> Value {
    raw.parse::<Value>().unwrap_or_else(|_| Value::from(raw))
}

/// Sets `key` to `raw` in the file at `path`. `raw` is read as a TOML value (`1`, `true`,
/// `["a", "b"]`, `"text"`); anything that is not one is taken as a plain string.
pub fn set(path: &Path, key: &str, raw: &str) -> Result<Config, ConfigError> {
    // Plugin tables are open-ended (`plugins.NAME.config.*`); the full parse below checks them.
    let default = if key.starts_with("plugins.") {
        None
    } else {
        Some(get(&Config::default(), key, path)?)
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| invalid(path, e.to_string()))?;
    if let Some(toml::Value::Table(section)) = &default {
        let example = section
            .keys()
            .next()
            .map_or(String::new(), |k| format!(", e.g. {key}.{k}"));
        return Err(invalid(
            path,
            format!(
                "{key} is a section: set one of its keys{example} (`pigeon config show` lists them)"
            ),
        ));
    }
    let mut value = value_of(raw);
    // One item where a list belongs (`config set node.listen /ip4/0.0.0.0/tcp/7717`) is a list of one.
    if matches!(default, Some(toml::Value::Array(_))) && !value.is_array() {
        value = Value::Array(std::iter::once(value).collect());
    }
    insert(doc.as_table_mut(), key, value).map_err(|m| invalid(path, m))?;
    let new_text = doc.to_string();
    let config = Config::parse(&new_text, path).map_err(|e| match e {
        ConfigError::Invalid { path, message } if !message.contains(key) => ConfigError::Invalid {
            path,
            message: format!("{key}: {message}"),
        },
        other => other,
    })?;
    write_atomic(path, new_text.as_bytes()).map_err(ConfigError::Write)?;
    Ok(config)
}

/// Every settable key, in order.
pub fn keys(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(tree)) = toml::Value::try_from(config) {
        collect("", &tree, &mut out);
    }
    out
}

fn collect(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => collect(&key, t, out),
            _ => out.push(key),
        }
    }
}

fn insert(root: &mut Table, key: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, tables) = parts.split_last().ok_or_else(|| "empty key".to_owned())?;
    let mut table = root;
    for part in tables {
        let item = table.entry(part).or_insert_with(|| {
            // `[plugins.x.config]` is written without empty `[plugins]` headers above it.
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table in the file"))?;
    }
    match table.get_mut(last).and_then(Item::as_value_mut) {
        // Keep the comment that trails the old value.
        Some(old) => {
            let decor = old.decor().clone();
            *old = value;
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(last, Item::Value(value));
        }
    }
    Ok(())
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message,
    }
}

fn unknown_key(config: &Config, key: &str, path: &Path) -> ConfigError {
    invalid(
        path,
        format!(
            "unknown key {key:?}; the keys are: {}",
            keys(config).join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TEMPLATE;

    fn template_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, TEMPLATE).expect("write");
        (dir, path)
    }

    #[test]
    fn set_keeps_comments_and_changes_only_the_key() {
        let (_dir, path) = template_file();
        let config = set(&path, "delivery.linger_ms", "25").expect("set");
        assert_eq!(config.delivery.linger_ms, 25);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("# Batches in flight to one peer at once."));
        assert!(text.contains("linger_ms = 25"));
        assert_eq!(text.lines().count(), TEMPLATE.lines().count());
        set(&path, "node.listen", r#"["/ip4/127.0.0.1/tcp/1"]"#).expect("array");
        set(&path, "metrics.listen", "127.0.0.1:9717").expect("bare word is a string");
        let config = Config::load(&path).expect("load");
        assert_eq!(config.node.listen, vec!["/ip4/127.0.0.1/tcp/1"]);
        assert_eq!(config.metrics.listen, "127.0.0.1:9717");
        assert_eq!(
            get(&config, "delivery.linger_ms", &path).expect("get"),
            toml::Value::Integer(25)
        );
    }

    #[test]
    fn a_section_is_not_a_value() {
        let (_dir, path) = template_file();
        let before = std::fs::read_to_string(&path).expect("read");
        let e = set(&path, "delivery", "5").expect_err("a section");
        assert!(e.to_string().contains("delivery is a section"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), before);
    }

    #[test]
    fn one_item_where_a_list_belongs_is_a_list_of_one() {
        let (_dir, path) = template_file();
        let config = set(&path, "node.listen", "/ip4/127.0.0.1/tcp/7717").expect("set");
        assert_eq!(config.node.listen.len(), 1);
        assert_eq!(config.node.listen[0].to_string(), "/ip4/127.0.0.1/tcp/7717");
    }

    #[test]
    fn built_in_plugins_have_their_settings_before_any_is_set() {
        let (_dir, path) = template_file();
        let config = Config::load(&path).expect("load");
        let enabled = get(&config, "plugins.keyword-labeler.enabled", &path).expect("known");
        assert_eq!(enabled, toml::Value::Boolean(false));
        let e = get(&config, "plugins.keyword-labeler.nope", &path).expect_err("unknown");
        assert!(
            e.to_string().contains("plugins.keyword-labeler.enabled"),
            "{e}"
        );
    }

    #[test]
    fn set_reaches_plugin_tables_and_checks_them() {
        let (_dir, path) = template_file();
        set(&path, "plugins.keyword-labeler.enabled", "true").expect("enable");
        set(&path, "plugins.keyword-labeler.config.invoice", "finance").expect("config");
        let config = Config::load(&path).expect("load");
        let pc = &config.plugins["keyword-labeler"];
        assert!(pc.enabled);
        assert_eq!(pc.config["invoice"].as_str(), Some("finance"));
        assert_eq!(
            get(&config, "plugins.keyword-labeler.config.invoice", &path).expect("get"),
            toml::Value::String("finance".into())
        );
        let before = std::fs::read_to_string(&path).expect("read");
        for (key, value) in [
            ("plugins.keyword-labeler.timeout_ms", "999999"),
            ("plugins.keyword-labeler.enabld", "true"),
            ("plugins.mine.enabled", "true"),
        ] {
            let err = set(&path, key, value).expect_err(key);
            assert!(err.to_string().contains("plugins."), "{key}: {err}");
            assert_eq!(
                std::fs::read_to_string(&path).expect("read"),
                before,
                "{key}"
            );
        }
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_leave_the_file_alone() {
        let (_dir, path) = template_file();
        for (key, value, needle) in [
            ("delivery.lingr_ms", "5", "unknown key"),
            ("delivery.linger_ms", "soon", "invalid type"),
            ("delivery.linger_ms.x", "1", "unknown key"),
            ("delivery.batch_max_messages", "0", "between 1"),
            ("delivery.message_ttl", "forever", "not a duration"),
            ("metrics.listen", "nowhere", "HOST:PORT"),
        ] {
            let err = set(&path, key, value).expect_err(key).to_string();
            assert!(err.contains(needle), "{key}={value}: {err}");
            assert_eq!(
                std::fs::read_to_string(&path).expect("read"),
                TEMPLATE,
                "{key} changed the file"
            );
        }
        assert!(keys(&Config::default()).contains(&"delivery.message_ttl".to_owned()));
    }
}

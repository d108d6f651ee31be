//! Every unknown key in a document, not only the first one serde stops at: the
//! keys as written (with their spans) are walked against the fields of the types
//! that read them, so one `nanny config check` lists every typo at once.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{did_you_mean, Source};
use super::file::{
    RawCatalog, RawCluster, RawConfig, RawDaemon, RawGateway, RawMcp, RawProbes, RawResources,
    RawRestart, RawScheduling, RawService, RawTemplate,
};
use super::ConfigError;
use crate::gpu::DeclaredGpu;

/// Keys a service also answers to (serde aliases, which the field list omits).
const SERVICE_ALIASES: [&str; 4] = ["dependencies", "health", "health_check", "health_path"];

/// The fields `T` reads: serde's derive hands them to `deserialize_struct`,
/// which this deserializer records and then refuses.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// Every unknown key of a whole `nanny.toml`, in the order written.
pub(super) fn unknown_in_config(source: &Source<'_>) -> Vec<ConfigError> {
    let Ok(root) = DeTable::parse(source.text) else {
        // A syntax error: serde's parse reports it.
        return Vec::new();
    };
    let mut found = Vec::new();
    let root = root.get_ref();
    check(source, root, fields_of::<RawConfig>(), &[], &mut found);
    if let Some(daemon) = table(root, "daemon") {
        check(source, daemon, fields_of::<RawDaemon>(), &[], &mut found);
    }
    if let Some(gateway) = table(root, "gateway") {
        check(source, gateway, fields_of::<RawGateway>(), &[], &mut found);
    }
    if let Some(cluster) = table(root, "cluster") {
        check(source, cluster, fields_of::<RawCluster>(), &[], &mut found);
    }
    if let Some(catalog) = table(root, "catalog") {
        check(source, catalog, fields_of::<RawCatalog>(), &[], &mut found);
        if let Some(DeValue::Array(templates)) = catalog.get("templates").map(Spanned::get_ref) {
            for template in templates.iter() {
                if let DeValue::Table(template) = template.get_ref() {
                    check(
                        source,
                        template,
                        fields_of::<RawTemplate>(),
                        &[],
                        &mut found,
                    );
                }
            }
        }
    }
    if let Some(services) = table(root, "services") {
        for service in services.values() {
            if let DeValue::Table(service) = service.get_ref() {
                check_service(source, service, &mut found);
            }
        }
    }
    if let Some(DeValue::Array(gpus)) = root.get("gpus").map(Spanned::get_ref) {
        for gpu in gpus.iter() {
            if let DeValue::Table(gpu) = gpu.get_ref() {
                check(source, gpu, fields_of::<DeclaredGpu>(), &[], &mut found);
            }
        }
    }
    found.sort_by_key(|(offset, _)| *offset);
    found.into_iter().map(|(_, error)| error).collect()
}

/// Every unknown key of one service manifest (its TOML text, or its YAML's
/// translation), in the order written.
pub(super) fn unknown_in_manifest(source: &Source<'_>) -> Vec<ConfigError> {
    let Ok(root) = DeTable::parse(source.text) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    check_service(source, root.get_ref(), &mut found);
    found.sort_by_key(|(offset, _)| *offset);
    found.into_iter().map(|(_, error)| error).collect()
}

fn check_service(
    source: &Source<'_>,
    service: &DeTable<'_>,
    found: &mut Vec<(usize, ConfigError)>,
) {
    check(
        source,
        service,
        fields_of::<RawService>(),
        &SERVICE_ALIASES,
        found,
    );
    // `restart = "always"` is a policy alone; only the table form has keys.
    if let Some(restart) = table(service, "restart") {
        check(source, restart, fields_of::<RawRestart>(), &[], found);
    }
    if let Some(probes) = table(service, "probes") {
        check(source, probes, fields_of::<RawProbes>(), &[], found);
    }
    if let Some(scheduling) = table(service, "scheduling") {
        check(source, scheduling, fields_of::<RawScheduling>(), &[], found);
    }
    if let Some(resources) = table(service, "resources") {
        check(source, resources, fields_of::<RawResources>(), &[], found);
    }
    if let Some(mcp) = table(service, "mcp") {
        check(source, mcp, fields_of::<RawMcp>(), &[], found);
    }
}

/// Where the key at `path` (`["services", "chat", "settings", "model"]`) is
/// written in `text`, as a byte offset.
pub(super) fn offset_of(text: &str, path: &[&str]) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let (last, parents) = path.split_last()?;
    let mut here = root.get_ref();
    for parent in parents {
        here = table(here, parent)?;
    }
    here.get_key_value(*last).map(|(key, _)| key.span().start)
}

fn table<'a, 'i>(parent: &'a DeTable<'i>, key: &str) -> Option<&'a DeTable<'i>> {
    match parent.get(key).map(Spanned::get_ref) {
        Some(DeValue::Table(table)) => Some(table),
        _ => None,
    }
}

/// The keys of `table` that are neither `fields` nor `aliases`, with a hint.
fn check(
    source: &Source<'_>,
    table: &DeTable<'_>,
    fields: &[&'static str],
    aliases: &[&'static str],
    found: &mut Vec<(usize, ConfigError)>,
) {
    // A type whose fields could not be read is not checked here (serde still is).
    if fields.is_empty() {
        return;
    }
    for key in table.keys() {
        let name: &str = key.get_ref();
        if fields.contains(&name) || aliases.contains(&name) {
            continue;
        }
        let hint = did_you_mean(name, fields.iter().copied()).map_or_else(
            || format!("unknown key; expected one of {}", quoted(fields)),
            |close| format!("unknown key; did you mean `{close}`?"),
        );
        let offset = key.span().start;
        found.push((offset, source.error(offset, name, hint)));
    }
}

fn quoted(fields: &[&str]) -> String {
    let quoted: Vec<String> = fields.iter().map(|field| format!("`{field}`")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn unknown(text: &str) -> Vec<String> {
        let source = Source {
            path: Path::new("nanny.toml"),
            text,
            yaml: None,
        };
        unknown_in_config(&source)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_unknown_key_is_named_with_its_line_in_the_order_written() {
        let text = "[daemon]\nlisen = \"127.0.0.1:1\"\n\n[services.chat]\nbackend = \"mock\"\nprot = 1\nrestart = { policy = \"always\", max_restart = 3 }\nprobes.pth = \"/h\"\nhealth = \"/health\"\n\n[[gpus]]\nindex = 0\nmemory_mib = 1\nmemory_mb = 2\n";
        assert_eq!(
            unknown(text),
            [
                "nanny.toml:2: `lisen`: unknown key; did you mean `listen`?",
                "nanny.toml:6: `prot`: unknown key; did you mean `port`?",
                "nanny.toml:7: `max_restart`: unknown key; did you mean `max_restarts`?",
                "nanny.toml:8: `pth`: unknown key; did you mean `path`?",
                "nanny.toml:14: `memory_mb`: unknown key; did you mean `memory_mib`?",
            ]
        );
    }

    #[test]
    fn known_keys_aliases_and_free_tables_pass() {
        let text = "[services.chat]\nbackend = \"mock\"\nport = 1\ndependencies = []\nrestart = \"always\"\nenv = { ANYTHING = \"x\" }\nsettings = { whatever = 1 }\n";
        assert!(unknown(text).is_empty(), "{:?}", unknown(text));
    }

    #[test]
    fn a_key_is_found_by_its_path_not_by_its_first_mention() {
        let text =
            "# model is set below\n[services.chat]\nbackend = \"mock\"\nsettings.model = \"m\"\n";
        let offset = offset_of(text, &["services", "chat", "settings", "model"]).unwrap();
        assert_eq!(&text[offset..offset + 5], "model");
        assert_eq!(text[..offset].matches('\n').count() + 1, 4);
        assert_eq!(offset_of(text, &["services", "chat", "port"]), None);
    }

    #[test]
    fn the_field_lists_are_read_from_the_types() {
        assert!(fields_of::<RawService>().contains(&"backend"));
        assert!(fields_of::<RawDaemon>().contains(&"listen"));
        assert!(fields_of::<DeclaredGpu>().contains(&"memory_mib"));
    }
}

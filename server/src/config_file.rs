//! `--config FILE.toml`: every key is a long flag's name (`listen = "0.0.0.0:443"`,
//! `tls-cert = "/etc/browserver/cert.pem"`, `max-sessions = 1000`, `trusted-proxies =
//! ["10.0.0.0/8"]`) — the server's, or those of the subcommand being run (`server`, `name`,
//! `ca` for `browserver expose`). Flags and environment variables override the file; a key
//! that is not a flag is an error naming it.
//!
//! The file is turned into command-line arguments for the flags the command line and the
//! environment left unset, and clap parses the whole again: one parser, one set of
//! validations, whatever the source.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;

/// Flags that make no sense in the file.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// The arguments `args` (the process's, program name first) extended with the settings in
/// `file` that `matches` (a lenient parse of `args`: `command.ignore_errors(true)`, since a
/// required flag may be in the file) did not get from the command line or the environment.
pub fn merge(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    args: &[OsString],
    file: &Path,
) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let subcommand = matches
        .subcommand_name()
        .and_then(|name| command.find_subcommand(name));
    let mut extra = Vec::new();
    let mut sub_extra = Vec::new();
    for (key, value) in &table {
        let is_key = |a: &&clap::Arg| {
            a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&a.get_id().as_str())
        };
        let sub_matches = matches.subcommand().map(|(_, m)| m);
        // Where the flag's value may have come from: a server flag (global) in either parse,
        // a subcommand's flag only in the subcommand's.
        let (arg, into, parses) = match command.get_arguments().find(is_key) {
            Some(arg) => (arg, &mut extra, [Some(matches), sub_matches]),
            None => match subcommand.and_then(|s| s.get_arguments().find(is_key)) {
                Some(arg) => (arg, &mut sub_extra, [sub_matches, None]),
                None => {
                    return Err(format!(
                        "{}: unknown key `{key}` (keys are the long flag names, e.g. `listen`)",
                        file.display()
                    ));
                }
            },
        };
        let id = arg.get_id().as_str();
        let set = parses.into_iter().flatten().any(|m| {
            m.ids().any(|i| i.as_str() == id)
                && matches!(
                    m.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
        });
        if set {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>(),
            v => scalar(v).map(|s| vec![s]),
        }
        .map_err(|why| format!("{}: `{key}`: {why}", file.display()))?;
        for v in values {
            match (takes_value, v.as_str()) {
                (true, _) => into.push(OsString::from(format!("--{key}={v}"))),
                (false, "true") => into.push(OsString::from(format!("--{key}"))),
                (false, "false") => {}
                (false, _) => {
                    return Err(format!(
                        "{}: `{key}` is a switch: true or false",
                        file.display()
                    ));
                }
            }
        }
    }
    let mut merged = Vec::with_capacity(args.len() + extra.len() + sub_extra.len());
    merged.extend(args.first().cloned());
    merged.extend(extra);
    merged.extend(args.iter().skip(1).cloned());
    // The subcommand's own flags go last, after its name (and its positional arguments,
    // which `--flag=value` cannot be mistaken for).
    merged.extend(sub_extra);
    Ok(merged)
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        // No flag takes a fraction; durations are strings ("1.5s").
        _ => Err("expected a string, an integer, a boolean or a list of them".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn command() -> Command {
        Command::new("t")
            .subcommand(
                Command::new("expose")
                    .arg(Arg::new("local").required(true))
                    .arg(Arg::new("server").long("server").required(true)),
            )
            .arg(Arg::new("config").long("config").global(true))
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .default_value("127.0.0.1:1"),
            )
            .arg(
                Arg::new("pattern")
                    .long("host-pattern")
                    .env("T_PATTERN_UNSET_XYZ"),
            )
            .arg(
                Arg::new("allow")
                    .long("allow")
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            )
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
    }

    fn file(text: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "browserver-config-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write");
        path
    }

    fn merged(args: &[&str], text: &str) -> Result<clap::ArgMatches, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let matches = command()
            .ignore_errors(true)
            .try_get_matches_from(&args)
            .expect("parse");
        let merged = merge(&command(), &matches, &args, &file(text))?;
        Ok(command()
            .try_get_matches_from(merged)
            .expect("parse merged"))
    }

    #[test]
    fn the_file_fills_what_the_command_line_left_unset_and_flags_win() {
        let text = "listen = 8080\nhost-pattern = \"*.example.com\"\nallow = [\"a\", \"b\"]\nquiet = true\n";
        let m = merged(&["t"], text).expect("ok");
        assert_eq!(
            m.get_one::<String>("listen").map(String::as_str),
            Some("8080"),
            "an integer"
        );
        assert_eq!(
            m.get_one::<String>("pattern").map(String::as_str),
            Some("*.example.com")
        );
        let allow: Vec<&String> = m.get_many::<String>("allow").expect("allow").collect();
        assert_eq!(allow, ["a", "b"]);
        assert!(m.get_flag("quiet"));
        let m = merged(&["t", "--listen", "[::1]:9", "--allow", "c"], text).expect("ok");
        assert_eq!(
            m.get_one::<String>("listen").map(String::as_str),
            Some("[::1]:9")
        );
        let allow: Vec<&String> = m.get_many::<String>("allow").expect("allow").collect();
        assert_eq!(
            allow,
            ["c"],
            "a list on the command line replaces the file's"
        );
    }

    #[test]
    fn a_subcommands_flags_are_keys_too_and_may_be_required_ones() {
        let m = merged(
            &["t", "expose", "http://x"],
            "server = \"wss://s\"\nlisten = \"[::1]:2\"",
        )
        .expect("ok");
        let (name, sub) = m.subcommand().expect("expose");
        assert_eq!(name, "expose");
        assert_eq!(
            sub.get_one::<String>("server").map(String::as_str),
            Some("wss://s")
        );
        assert_eq!(
            sub.get_one::<String>("local").map(String::as_str),
            Some("http://x")
        );
        assert_eq!(
            m.get_one::<String>("listen").map(String::as_str),
            Some("[::1]:2")
        );
        let m = merged(
            &["t", "expose", "http://x", "--server", "ws://flag"],
            "server = \"wss://s\"",
        )
        .expect("ok");
        let sub = m.subcommand().expect("expose").1;
        assert_eq!(
            sub.get_one::<String>("server").map(String::as_str),
            Some("ws://flag")
        );
        // Without the subcommand, its flags are unknown.
        assert!(
            merged(&["t"], "server = \"x\"")
                .expect_err("unknown")
                .contains("unknown key `server`")
        );
    }

    #[test]
    fn unknown_keys_and_unusable_values_are_errors_naming_the_key() {
        let err = merged(&["t"], "lisen = \"x\"").expect_err("unknown");
        assert!(err.contains("unknown key `lisen`"), "{err}");
        let err = merged(&["t"], "config = \"x\"").expect_err("config in config");
        assert!(err.contains("unknown key `config`"), "{err}");
        let err = merged(&["t"], "[listen]\na = 1").expect_err("table");
        assert!(err.contains("`listen`"), "{err}");
        let err = merged(&["t"], "listen = 1.5").expect_err("a fraction");
        assert!(err.contains("`listen`"), "{err}");
        let err = merged(&["t"], "quiet = \"yes\"").expect_err("switch");
        assert!(err.contains("switch"), "{err}");
        let err = merged(&["t"], "listen = ").expect_err("syntax");
        assert!(err.contains("browserver-config"), "{err}");
    }
}

//! Shared helpers for the echo benchmark binaries (`loadgen`, `floor`).
//!
//! Only a minimal `--name value` argument parser lives here, to keep the
//! package free of dependencies beyond `mio`.

use std::collections::HashMap;
use std::str::FromStr;

/// Parsed `--name value` / `--flag` command-line arguments.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `argv` (without the program name). `flag_names` lists the
    /// options that take no value; every other `--name` must be followed by
    /// a value (or written `--name=value`).
    pub fn parse<I>(argv: I, flag_names: &[&str]) -> Result<Args, String>
    where
        I: IntoIterator<Item = String>,
    {
        let mut args = Args::default();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if let Some((key, value)) = name.split_once('=') {
                args.values.insert(key.to_string(), value.to_string());
            } else if flag_names.contains(&name) {
                args.flags.push(name.to_string());
            } else {
                let value = it
                    .next()
                    .ok_or_else(|| format!("option --{name} needs a value"))?;
                args.values.insert(name.to_string(), value);
            }
        }
        Ok(args)
    }

    /// True if the flag `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The value of `--name` parsed as `T`, or `None` if absent.
    pub fn get<T: FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| format!("invalid value {v:?} for --{name}")),
        }
    }

    /// The value of `--name` parsed as `T`, or `default` if absent.
    pub fn get_or<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        Ok(self.get(name)?.unwrap_or(default))
    }

    /// Fails if any `--name value` option is not in `known`.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), String> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Args;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_values_and_flags() {
        let a = Args::parse(argv("--port 80 --sync --size=1024"), &["sync"]).unwrap();
        assert_eq!(a.get::<u16>("port").unwrap(), Some(80));
        assert_eq!(a.get_or::<usize>("size", 1).unwrap(), 1024);
        assert!(a.flag("sync"));
        assert!(a.reject_unknown(&["port", "size"]).is_ok());
        assert!(a.reject_unknown(&["port"]).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Args::parse(argv("port"), &[]).is_err());
        assert!(Args::parse(argv("--port"), &[]).is_err());
        let a = Args::parse(argv("--port x"), &[]).unwrap();
        assert!(a.get::<u16>("port").is_err());
    }
}

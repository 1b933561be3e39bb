//! The record one master image hands the next when it executes a new binary in its own pid:
//! what the descriptors it kept open are, and where the master was.
//!
//! It is JSON with a `version`. A reader takes any version up to its own, so a newer prefork
//! reads an older record; fields added later are optional to it. Anything it cannot read is
//! an error, never a guess: the new image then hands the record back to the previous one.

use std::os::fd::RawFd;

use serde_json::{Map, Value, json};

/// The version this build writes, and the newest it reads.
pub(crate) const VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The serving generation.
    pub(crate) generation: u32,
    /// Workers wanted in it (TTIN/TTOU move it from `configured`).
    pub(crate) target: usize,
    /// `workers` as the configuration of the serving generation said.
    pub(crate) configured: usize,
    /// Whether every worker had been ready: where a failed upgrade returns to.
    pub(crate) was_serving: bool,
    pub(crate) workers: Vec<WorkerRecord>,
    pub(crate) listeners: Vec<ListenerRecord>,
    /// The memory file of the accept-balancing board.
    pub(crate) board: RawFd,
    /// The memory file of the metrics; absent from records of builds without metrics.
    pub(crate) metrics: Option<RawFd>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerRecord {
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) pid: i32,
    pub(crate) ready: bool,
    pub(crate) retiring: bool,
    pub(crate) leaving: bool,
    /// When it is killed if still alive, in `CLOCK_MONOTONIC` nanoseconds.
    pub(crate) kill_at: Option<u64>,
    /// The master's end of its control channel, if the worker has not closed it.
    pub(crate) control: Option<RawFd>,
    /// Its cell on the board.
    pub(crate) cell: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerRecord {
    /// The address as configured (`127.0.0.1:0` stays port 0, so a reload keeps the socket).
    pub(crate) addr: String,
    pub(crate) fd: RawFd,
    /// Passed by systemd: kept whatever the configuration says.
    pub(crate) activated: bool,
    /// Serves the metrics (false in records of builds without metrics).
    pub(crate) metrics: bool,
    /// Serves TLS (false in records of builds without TLS).
    pub(crate) tls: bool,
}

impl Record {
    pub(crate) fn encode(&self) -> String {
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                json!({
                    "slot": w.slot,
                    "generation": w.generation,
                    "pid": w.pid,
                    "ready": w.ready,
                    "retiring": w.retiring,
                    "leaving": w.leaving,
                    "kill_at": w.kill_at,
                    "control": w.control,
                    "cell": w.cell,
                })
            })
            .collect();
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "addr": l.addr,
                    "fd": l.fd,
                    "activated": l.activated,
                    "metrics": l.metrics,
                    "tls": l.tls,
                })
            })
            .collect();
        json!({
            "version": VERSION,
            "generation": self.generation,
            "target": self.target,
            "configured": self.configured,
            "was_serving": self.was_serving,
            "workers": workers,
            "listeners": listeners,
            "board": self.board,
            "metrics": self.metrics,
        })
        .to_string()
    }

    pub(crate) fn decode(text: &str) -> Result<Record, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let top = Fields::of(&value, "the record")?;
        let version = top.uint("version")?;
        if version == 0 || version > VERSION {
            return Err(format!(
                "version {version}, and this build reads 1 to {VERSION}"
            ));
        }
        let workers = top
            .list("workers")?
            .iter()
            .map(|item| {
                let w = Fields::of(item, "a worker")?;
                Ok(WorkerRecord {
                    slot: w.size("slot")?,
                    generation: w.small("generation")?,
                    pid: w.int("pid")?,
                    ready: w.flag("ready")?,
                    retiring: w.flag("retiring")?,
                    leaving: w.flag("leaving")?,
                    kill_at: w.optional("kill_at", Fields::uint)?,
                    control: w.optional("control", Fields::int)?,
                    cell: w.size("cell")?,
                })
            })
            .collect::<Result<_, String>>()?;
        let listeners = top
            .list("listeners")?
            .iter()
            .map(|item| {
                let l = Fields::of(item, "a listener")?;
                Ok(ListenerRecord {
                    addr: l.text("addr")?,
                    fd: l.int("fd")?,
                    activated: l.flag("activated")?,
                    metrics: l.optional("metrics", Fields::flag)?.unwrap_or(false),
                    tls: l.optional("tls", Fields::flag)?.unwrap_or(false),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Record {
            generation: top.small("generation")?,
            target: top.size("target")?,
            configured: top.size("configured")?,
            was_serving: top.flag("was_serving")?,
            workers,
            listeners,
            board: top.int("board")?,
            metrics: top.optional("metrics", Fields::int)?,
        })
    }
}

/// The fields of one JSON object, read with errors that say which field of what was wrong.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn of(value: &'a Value, what: &'static str) -> Result<Self, String> {
        let map = value
            .as_object()
            .ok_or_else(|| format!("{what} is not an object"))?;
        Ok(Self { map, what })
    }

    fn get(&self, key: &str) -> Result<&'a Value, String> {
        self.map
            .get(key)
            .ok_or_else(|| format!("{} has no {key}", self.what))
    }

    fn bad(&self, key: &str, expected: &str) -> String {
        format!("{} of {} is not {expected}", key, self.what)
    }

    fn uint(&self, key: &str) -> Result<u64, String> {
        self.get(key)?
            .as_u64()
            .ok_or_else(|| self.bad(key, "a whole number"))
    }

    fn size(&self, key: &str) -> Result<usize, String> {
        usize::try_from(self.uint(key)?).map_err(|_| self.bad(key, "a count"))
    }

    fn small(&self, key: &str) -> Result<u32, String> {
        u32::try_from(self.uint(key)?).map_err(|_| self.bad(key, "a generation"))
    }

    fn int(&self, key: &str) -> Result<i32, String> {
        let n = self.get(key)?.as_i64();
        n.and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| self.bad(key, "a descriptor or pid"))
    }

    fn flag(&self, key: &str) -> Result<bool, String> {
        self.get(key)?
            .as_bool()
            .ok_or_else(|| self.bad(key, "true or false"))
    }

    fn text(&self, key: &str) -> Result<String, String> {
        let text = self.get(key)?.as_str();
        text.map(str::to_string)
            .ok_or_else(|| self.bad(key, "a string"))
    }

    /// A field that may be absent or null.
    fn optional<T>(
        &self,
        key: &str,
        read: fn(&Self, &str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => read(self, key).map(Some),
        }
    }

    fn list(&self, key: &str) -> Result<&'a Vec<Value>, String> {
        self.get(key)?
            .as_array()
            .ok_or_else(|| self.bad(key, "a list"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            generation: 3,
            target: 4,
            configured: 3,
            was_serving: true,
            workers: vec![
                WorkerRecord {
                    slot: 1,
                    generation: 3,
                    pid: 4242,
                    ready: true,
                    retiring: false,
                    leaving: false,
                    kill_at: None,
                    control: Some(7),
                    cell: 0,
                },
                WorkerRecord {
                    slot: 2,
                    generation: 2,
                    pid: 4243,
                    ready: true,
                    retiring: false,
                    leaving: true,
                    kill_at: Some(123_456_789_000),
                    control: None,
                    cell: 1,
                },
            ],
            listeners: vec![
                ListenerRecord {
                    addr: "127.0.0.1:0".into(),
                    fd: 3,
                    activated: false,
                    metrics: false,
                    tls: true,
                },
                ListenerRecord {
                    addr: "127.0.0.1:9100".into(),
                    fd: 6,
                    activated: false,
                    metrics: true,
                    tls: false,
                },
                ListenerRecord {
                    addr: "unix:/run/app.sock".into(),
                    fd: 4,
                    activated: true,
                    metrics: false,
                    tls: false,
                },
            ],
            board: 5,
            metrics: Some(7),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = sample();
        assert_eq!(Record::decode(&record.encode()), Ok(record));
    }

    #[test]
    fn a_newer_version_is_refused_and_an_older_one_read() {
        let mut value: Value = serde_json::from_str(&sample().encode()).unwrap();
        value["version"] = json!(VERSION + 1);
        let err = Record::decode(&value.to_string()).unwrap_err();
        assert!(err.contains(&format!("version {}", VERSION + 1)), "{err}");
        value["version"] = json!(0);
        assert!(Record::decode(&value.to_string()).is_err());
        // Fields a later version adds are ignored by this one.
        value["version"] = json!(VERSION);
        value["added_later"] = json!({"anything": [1, 2]});
        assert_eq!(Record::decode(&value.to_string()), Ok(sample()));
        // A build without metrics or TLS wrote neither the table nor the listeners' flags.
        value.as_object_mut().unwrap().remove("metrics");
        for listener in value["listeners"].as_array_mut().unwrap() {
            listener.as_object_mut().unwrap().remove("metrics");
            listener.as_object_mut().unwrap().remove("tls");
        }
        let old = Record::decode(&value.to_string()).unwrap();
        assert_eq!(old.metrics, None);
        assert!(old.listeners.iter().all(|l| !l.metrics && !l.tls));
    }

    #[test]
    fn what_cannot_be_read_is_an_error_that_says_what() {
        assert!(Record::decode("").unwrap_err().starts_with("not JSON"));
        assert!(Record::decode("[1]").is_err());
        let mut value: Value = serde_json::from_str(&sample().encode()).unwrap();
        value["workers"][0].as_object_mut().unwrap().remove("pid");
        assert_eq!(
            Record::decode(&value.to_string()),
            Err("a worker has no pid".to_string())
        );
        let mut value: Value = serde_json::from_str(&sample().encode()).unwrap();
        value["board"] = json!(-1);
        assert_eq!(
            Record::decode(&value.to_string()),
            Err("board of the record is not a descriptor or pid".to_string())
        );
    }

    proptest::proptest! {
        #[test]
        fn reading_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = Record::decode(&text);
        }

        #[test]
        fn a_mangled_record_is_an_error_or_a_record(cut in 0usize..400, byte in proptest::prelude::any::<u8>()) {
            let mut text = sample().encode().into_bytes();
            let at = cut % text.len();
            text[at] = byte;
            let _ = Record::decode(&String::from_utf8_lossy(&text));
        }
    }
}

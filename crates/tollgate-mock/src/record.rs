//! Recording of API requests for `GET /__mock/requests`, and tracking of how
//! each response ended (written completely, or the client went away).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::lock;

/// How many requests are kept; older ones are forgotten so a long benchmark
/// run cannot grow the mock without bound.
pub const DEFAULT_RECORD_CAPACITY: usize = 10_000;

/// One recorded API request, as returned by `GET /__mock/requests`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// 1, 2, 3… in arrival order; never reset, not even by a clear.
    pub seq: u64,
    /// `"openai"` or `"anthropic"`, from the path.
    pub api: &'static str,
    /// The full request path, prefix included (e.g. `/openai/v1/chat/completions`).
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    /// Request headers, names lowercased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The parsed JSON body; the raw text as a JSON string if it did not parse.
    pub body: Value,
    /// Status code the mock answered with.
    pub status: u16,
    /// Faults that took effect (from the header and from rules).
    pub faults: Vec<String>,
    /// The whole response was handed to the connection.
    pub completed: bool,
    /// The client disconnected before the response was complete.
    pub client_aborted: bool,
}

#[derive(Debug)]
struct RecordLog {
    next_seq: u64,
    records: VecDeque<RequestRecord>,
}

/// The bounded request log shared by all connections.
#[derive(Debug)]
pub struct Recorder {
    capacity: usize,
    log: Mutex<RecordLog>,
}

impl Recorder {
    pub fn new(capacity: usize) -> Recorder {
        Recorder { capacity, log: Mutex::new(RecordLog { next_seq: 1, records: VecDeque::new() }) }
    }

    /// Stores a record, assigning its `seq`, and returns that seq. The seq is
    /// assigned under the same lock as the insertion so the log stays sorted.
    pub fn insert(&self, mut record: RequestRecord) -> u64 {
        let mut log = lock(&self.log);
        let seq = log.next_seq;
        log.next_seq += 1;
        record.seq = seq;
        log.records.push_back(record);
        while log.records.len() > self.capacity {
            log.records.pop_front();
        }
        seq
    }

    /// Changes a record if it is still kept (it may have been cleared or
    /// pushed out by newer ones, which is fine).
    fn update(&self, seq: u64, change: impl FnOnce(&mut RequestRecord)) {
        let mut log = lock(&self.log);
        // Seqs are consecutive within the log, so the position is arithmetic.
        let Some(first_seq) = log.records.front().map(|record| record.seq) else { return };
        let Some(index) = seq.checked_sub(first_seq).and_then(|offset| usize::try_from(offset).ok()) else { return };
        if let Some(record) = log.records.get_mut(index).filter(|record| record.seq == seq) {
            change(record);
        }
    }

    pub fn list(&self) -> Vec<RequestRecord> {
        lock(&self.log).records.iter().cloned().collect()
    }

    /// Forgets every record; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut log = lock(&self.log);
        let count = log.records.len();
        log.records.clear();
        count
    }
}

/// Follows one response to its end. Created as soon as the request is
/// recorded and carried along (first by the request handler, then by the
/// response body), so dropping it early — hyper drops both when the client
/// disconnects — is what records `client_aborted`.
#[derive(Debug)]
pub struct ResponseTracker {
    recorder: Arc<Recorder>,
    seq: u64,
    settled: bool,
}

impl ResponseTracker {
    pub fn new(recorder: Arc<Recorder>, seq: u64) -> ResponseTracker {
        ResponseTracker { recorder, seq, settled: false }
    }

    /// The last byte of the response was handed to the connection.
    pub fn completed(&mut self) {
        if !self.settled {
            self.settled = true;
            self.recorder.update(self.seq, |record| record.completed = true);
        }
    }

    /// The mock itself cut the response short (a `drop_after` fault): neither
    /// completed nor the client's doing.
    pub fn aborted_by_fault(&mut self) {
        self.settled = true;
    }
}

impl Drop for ResponseTracker {
    fn drop(&mut self) {
        if !self.settled {
            self.recorder.update(self.seq, |record| record.client_aborted = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            seq: 0,
            api: "openai",
            path: "/v1/chat/completions".into(),
            model: None,
            stream: false,
            headers: BTreeMap::new(),
            body: Value::Null,
            status: 200,
            faults: Vec::new(),
            completed: false,
            client_aborted: false,
        }
    }

    #[test]
    fn keeps_only_the_newest() {
        let recorder = Recorder::new(3);
        for _ in 0..5 {
            recorder.insert(record());
        }
        let seqs: Vec<u64> = recorder.list().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(recorder.clear(), 3);
        assert_eq!(recorder.insert(record()), 6);
    }

    #[test]
    fn tracker_marks_completion_or_abort() {
        let recorder = Arc::new(Recorder::new(10));
        let done = recorder.insert(record());
        let gone = recorder.insert(record());
        let faulted = recorder.insert(record());
        ResponseTracker::new(recorder.clone(), done).completed();
        drop(ResponseTracker::new(recorder.clone(), gone));
        ResponseTracker::new(recorder.clone(), faulted).aborted_by_fault();
        let list = recorder.list();
        assert!(list[0].completed && !list[0].client_aborted);
        assert!(!list[1].completed && list[1].client_aborted);
        assert!(!list[2].completed && !list[2].client_aborted);
    }

    #[test]
    fn updating_a_forgotten_record_is_harmless() {
        let recorder = Arc::new(Recorder::new(1));
        let old = recorder.insert(record());
        recorder.insert(record());
        ResponseTracker::new(recorder.clone(), old).completed();
        assert!(!recorder.list()[0].completed);
    }
}

//! The log's commit files: their paths, their encoding, and what their actions say.

use super::*;

/// What a commit's actions say about one application's transaction (what [`Check`]s look at).
pub fn txn_in(actions: &[Action], app_id: &str) -> Option<i64> {
    actions.iter().find_map(|a| match a {
        Action::Txn(t) if t.app_id == app_id => Some(t.version),
        _ => None,
    })
}

pub(super) fn log_path(table: &str, version: i64) -> Path {
    Path::from(format!("{table}/_delta_log/{version:020}.json"))
}

/// The actions of a commit file.
pub fn parse_commit(bytes: &[u8]) -> Result<Vec<Action>, serde_json::Error> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(serde_json::from_slice::<Action>)
        .collect()
}

pub(super) fn encode_commit(info: &CommitInfo, actions: &[Action]) -> Result<Bytes, LakeError> {
    let mut out = Vec::with_capacity(512 * (actions.len() + 1));
    let json = |a: &Action, out: &mut Vec<u8>| -> Result<(), LakeError> {
        serde_json::to_writer(&mut *out, a).map_err(|e| LakeError::Corrupt {
            path: "commit".into(),
            message: e.to_string(),
        })?;
        out.push(b'\n');
        Ok(())
    };
    json(&Action::CommitInfo(info.clone()), &mut out)?;
    for a in actions {
        json(a, &mut out)?;
    }
    Ok(out.into())
}

/// A txn action for `app_id` at `version`.
pub fn txn(app_id: &str, version: i64) -> Action {
    Action::Txn(Transaction::new_with_last_update(
        app_id,
        version,
        Some(crate::now_ms()),
    ))
}

/// One line about a commit: version, time, operation, files added and removed, txn versions.
pub fn describe_commit(version: i64, actions: &[Action]) -> String {
    let (mut added, mut removed, mut txns) = (0, 0, Vec::new());
    let mut when = String::new();
    let mut op = String::new();
    for a in actions {
        match a {
            Action::Add(_) => added += 1,
            Action::Remove(_) => removed += 1,
            Action::Txn(t) => txns.push(format!("{}={}", t.app_id, t.version)),
            Action::CommitInfo(c) => {
                op = c.operation.clone().unwrap_or_default();
                when = c
                    .timestamp
                    .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    format!(
        "{version:>8} {when:24} {op:18} +{added:<4} -{removed:<4} {}",
        txns.join(" ")
    )
}

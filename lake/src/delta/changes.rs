//! What changed in a table since a version: the files of new rows, read commit by commit (the
//! query service's device status follows the lake this way, without reading a file twice).

use deltalake::kernel::Action;

use super::{DataFile, Table};
use crate::store::LakeError;

/// What [`Table::added_since`] found: the newest version, and the files of new rows up to it.
#[derive(Debug, Clone)]
pub struct Added {
    /// The newest version of the table (or the version asked about, when the table has none).
    pub version: i64,
    /// The data files of new rows that the commits after that version added, in commit order.
    pub files: Vec<DataFile>,
}

impl Table {
    /// The data files that the commits after version `after` added with `dataChange = true`, up to
    /// the newest version: the rows new since `after` (a compaction's files hold rows already in
    /// the table and are left out). `None` when the log no longer holds one of those commits (log
    /// cleanup): read the snapshot ([`Table::files`]) instead.
    pub async fn added_since(&self, after: i64) -> Result<Option<Added>, LakeError> {
        let Some(newest) = self.version().await? else {
            return Ok(Some(Added {
                version: after,
                files: Vec::new(),
            }));
        };
        let mut files = Vec::new();
        for v in after.saturating_add(1)..=newest {
            let Some(actions) = self.read_commit(v).await? else {
                return Ok(None);
            };
            for a in &actions {
                if let Action::Add(add) = a
                    && add.data_change
                {
                    files.push(self.data_file_of(add));
                }
            }
        }
        Ok(Some(Added {
            version: newest.max(after),
            files,
        }))
    }
}

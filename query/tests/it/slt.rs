//! Runs every `query/tests/slt/*.slt` file (sqllogictest format) against a DataFusion context with
//! the H3 functions registered. The runner allows DDL so a file can build its own small tables; the
//! service's SQL endpoint does not (see `http/sql.rs`).

use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use hexpulse_query::datafusion;
use hexpulse_query::datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};

struct Db {
    ctx: SessionContext,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let err = |e: datafusion::error::DataFusionError| DbError(e.to_string());
        let df = self.ctx.sql(sql).await.map_err(err)?;
        let columns = df.schema().fields().len();
        let batches = df.collect().await.map_err(err)?;
        if columns == 0 || sql.trim_start().to_ascii_lowercase().starts_with("create") {
            return Ok(DBOutput::StatementComplete(0));
        }
        let opts = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &batches {
            let fmts = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DbError(e.to_string()))?;
            for i in 0..b.num_rows() {
                rows.push(fmts.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; columns],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

#[tokio::test]
async fn h3_functions_pass_their_slt_files() {
    let dir = hexpulse_testkit::testenv::repo_root().join("query/tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for f in files {
        let mut runner = sqllogictest::Runner::new(|| async {
            let ctx = SessionContext::new();
            hexpulse_query::udf::register(&ctx, 12);
            Ok(Db { ctx })
        });
        if let Err(e) = runner.run_file_async(&f).await {
            panic!("{}: {}", f.display(), e.display(true));
        }
    }
}

//! Read-only SQL with limits.
//!
//! Only queries run: the plan is checked with DataFusion's `SQLOptions` (no DDL such as
//! `CREATE EXTERNAL TABLE`, no DML such as `COPY` or `INSERT`, no statements such as `SET`), and the
//! context knows no file or URL outside the lake (URL tables are off), so `SELECT * FROM '/etc/passwd'`
//! finds no table. [`crate::gate`] runs the plans, within the limits.

use std::ops::ControlFlow;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, ObjectNamePart, visit_expressions};

/// A refused or failed query, with the HTTP status and a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before retrying (a rate limit).
    pub retry_after_s: Option<u32>,
}

impl hexpulse_common::fault::Classify for SqlError {
    /// By the answer's status: 4xx are the caller's, 503 (busy) may pass, other 5xx are ours.
    fn fault(&self) -> hexpulse_common::fault::Fault {
        use hexpulse_common::fault::Fault;
        match self.status {
            503 => Fault::External,
            s if s >= 500 => Fault::Internal,
            _ => Fault::User,
        }
    }
}

impl SqlError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, secs: u32) -> SqlError {
        self.retry_after_s = Some(secs);
        self
    }
}

/// Tables of raw rows that identify devices' movements or carry raw payloads (dashcam tracks, rejected
/// messages). Only callers with the `raw` group may read them: SQL from any other caller runs on a
/// context whose catalog does not hold them ([`crate::catalog::Contexts`]), so no plan, subquery,
/// `information_schema` view or `DESCRIBE` reaches them, and naming one is refused with 403.
pub const PRIVATE_TABLES: [&str; 2] = ["road", "rejected"];

/// Functions no SQL caller may call: `input_file_name()` would give the lake's object paths (and
/// fails on the lake's tables anyway, since every call is wrapped by [`crate::bounded`]). No
/// context holds them.
pub const WITHHELD_FUNCTIONS: [&str; 1] = ["input_file_name"];

const SPILL_LIMIT_TEXT: &str = "exceeded the allowable limit";

/// Whether `e` is, or was caused by, a refusal for resources (the memory pool, the spill space,
/// an expression's bound), wherever it is wrapped: spilling reports it inside an I/O error.
fn exhausted(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(DataFusionError::ResourcesExhausted(_)) = x.downcast_ref::<DataFusionError>() {
            return true;
        }
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| exhausted(inner)) {
                return true;
            }
            // DataFusion 55 reports the spill limit only as an untyped I/O error with this text
            // (`disk_manager.rs`; its own tests match it the same way).
            if io.to_string().contains(SPILL_LIMIT_TEXT) {
                return true;
            }
        }
        cur = x.source();
    }
    false
}

pub(crate) fn classify(e: DataFusionError) -> SqlError {
    let msg = e.to_string();
    if crate::deadline::is_time_limit(&e) {
        return SqlError::new(408, "time_limit", msg);
    }
    match e.find_root() {
        DataFusionError::SQL(..) => SqlError::new(400, "sql_syntax", msg),
        DataFusionError::Plan(..) | DataFusionError::SchemaError(..) => {
            SqlError::new(400, "sql_plan", msg)
        }
        _ if exhausted(&e) => SqlError::new(413, "memory_limit", msg),
        DataFusionError::NotImplemented(..) => SqlError::new(400, "not_supported", msg),
        _ => SqlError::new(400, "sql_error", msg),
    }
}

/// The SQL text of a `POST /v1/sql` body: the body itself (UTF-8), or `{"sql": "..."}` when the
/// content type is JSON. A 400 with a stable code otherwise.
pub fn request_text(content_type: Option<&str>, body: &[u8]) -> Result<String, SqlError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| SqlError::new(400, "not_utf8", "the body is not UTF-8"))?;
    let is_json = content_type.is_some_and(|v| v.starts_with("application/json"));
    let query = if is_json {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("sql")?.as_str().map(str::to_string))
            .ok_or_else(|| {
                SqlError::new(400, "bad_body", "a JSON body must be {\"sql\": \"...\"}")
            })?
    } else {
        text.to_string()
    };
    if query.trim().is_empty() {
        return Err(SqlError::new(400, "empty", "no SQL in the body"));
    }
    Ok(query)
}

/// A read-only plan for `sql`: parsed and planned against the context's tables, and checked for
/// DDL/DML/statements. `ctx` is the caller's context ([`crate::catalog::Contexts::for_sql`]);
/// without `allow_raw`, a reference to one of [`PRIVATE_TABLES`] gets 403 and its reason rather
/// than the context's "not found".
pub async fn plan(
    ctx: &SessionContext,
    sql: &str,
    allow_raw: bool,
) -> Result<LogicalPlan, SqlError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(classify)?;
    if let Some(f) = withheld_function_called(&statement) {
        return Err(SqlError::new(
            400,
            "unsupported",
            format!("{f}() is not offered: it would give the lake's object paths"),
        ));
    }
    if !allow_raw {
        let references = state
            .resolve_table_references(&statement)
            .map_err(classify)?;
        if let Some(t) = references.iter().find(|r| is_private(r)) {
            return Err(SqlError::new(
                403,
                "private",
                format!(
                    "table {} holds raw device rows and needs the `raw` permission; road data is \
                     public only as k-anonymous hexes (GET /v1/road/hexes, table road_hex)",
                    t.table()
                ),
            ));
        }
    }
    let plan = state.statement_to_plan(statement).await.map_err(classify)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| {
            SqlError::new(
                403,
                "read_only",
                format!("only SELECT, WITH and EXPLAIN are allowed: {e}"),
            )
        })?;
    Ok(plan)
}

/// The first of [`WITHHELD_FUNCTIONS`] that `statement` calls, anywhere in it. No context holds
/// them, so this only gives the refusal its reason.
fn withheld_function_called(statement: &DFStatement) -> Option<&'static str> {
    let sql = match statement {
        DFStatement::Statement(s) => s,
        DFStatement::Explain(e) => return withheld_function_called(&e.statement),
        _ => return None,
    };
    let mut found = None;
    let _ = visit_expressions(sql.as_ref(), |e| {
        if let Expr::Function(f) = e
            && let Some(ObjectNamePart::Identifier(name)) = f.name.0.last()
            && let Some(withheld) = WITHHELD_FUNCTIONS
                .into_iter()
                .find(|w| w.eq_ignore_ascii_case(&name.value))
        {
            found = Some(withheld);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Whether `r` names one of [`PRIVATE_TABLES`] in the lake's schemas (a CTE of the same name is
/// not a table reference).
fn is_private(r: &datafusion::common::TableReference) -> bool {
    PRIVATE_TABLES.contains(&r.table())
        && r.schema()
            .is_none_or(|s| s == crate::catalog::SCHEMA || s == crate::catalog::COMMITTED)
        && r.catalog().is_none_or(|c| c == crate::catalog::CATALOG)
}

/// The tables a plan scans, subqueries included (the fuzz target's check that a public plan
/// never scans a private table).
pub fn scanned_tables(plan: &LogicalPlan) -> Vec<String> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            out.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The types of a plan's parameters in their order (`$1`, `$2`, ...), from
/// `LogicalPlan::get_parameter_types`. Parameters must be numbered from 1 without gaps.
pub(crate) fn ordered_params(
    types: std::collections::HashMap<String, Option<datafusion::arrow::datatypes::DataType>>,
) -> Result<Vec<Option<datafusion::arrow::datatypes::DataType>>, SqlError> {
    let mut out = vec![None; types.len()];
    for (name, t) in types {
        let i = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=out.len()).contains(n))
            .ok_or_else(|| {
                SqlError::new(
                    400,
                    "sql_plan",
                    format!("parameter {name}: parameters are $1, $2, ... without gaps"),
                )
            })?;
        out[i - 1] = t;
    }
    Ok(out)
}

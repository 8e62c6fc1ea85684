//! PostgreSQL's system catalog, for the clients of the PostgreSQL door: psql's `\d` commands,
//! DBeaver, Metabase and Grafana's table browser read `pg_catalog` (`pg_namespace`, `pg_class`,
//! `pg_attribute`, `pg_type`, ...) and call its functions (`pg_table_is_visible`, `format_type`,
//! `current_schema`, ...). datafusion-pg-catalog provides both, over DataFusion's own catalog, and
//! its parser ([`compatible`]) rewrites what those clients send that DataFusion does not plan
//! (`OPERATOR(pg_catalog.~)`, `'name'::regclass`, `COLLATE`, ...).
//!
//! Wired here by hand rather than by the crate's `setup_pg_catalog`, which would replace the
//! session's type planner ([`crate::bounded::WideTypes`]) and add functions after
//! [`crate::bounded::install`] has wrapped every function: [`functions`] come before that (so they
//! are bounded like the rest), the crate's type planner runs after ours ([`type_planner`]), and
//! [`schema`] is registered in each context over that context's own catalog list, so that a caller
//! without `raw` does not find the private tables in `pg_class` either.

use std::sync::{Arc, OnceLock, Weak};

use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProviderList;
use datafusion::common::ScalarValue;
use datafusion::common::utils::SingleRowListArrayBuilder;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::{SessionContext, create_udf};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as pgc, PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, format_type,
    has_privilege_udf, oid_type_planner::PgOidTypePlanner, pg_get_expr_udf, quote_ident_udf,
};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::catalog::{CATALOG, SCHEMA};

/// The schema's name.
pub const PG_CATALOG: &str = "pg_catalog";

/// PostgreSQL's static system tables (types, operators, functions, ...), read once per process.
fn static_tables() -> Result<Arc<PgCatalogStaticTables>> {
    static TABLES: OnceLock<std::result::Result<Arc<PgCatalogStaticTables>, String>> =
        OnceLock::new();
    TABLES
        .get_or_init(|| {
            PgCatalogStaticTables::try_new()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| DataFusionError::Internal(format!("pg_catalog's static tables: {e}")))
}

/// The session's type planner: [`crate::bounded::WideTypes`], then PostgreSQL's oid aliases
/// (`regclass`, `regtype`, `oid`, ...) and `pg_catalog.`-qualified type names.
pub fn type_planner() -> Arc<dyn TypePlanner> {
    Arc::new(crate::bounded::WideTypes::then(Arc::new(PgOidTypePlanner)))
}

/// The system catalog's functions, registered in `ctx` (before [`crate::bounded::install`]).
pub fn functions(ctx: &SessionContext) -> Result<()> {
    for f in [
        pgc::create_current_database_udf(CATALOG),
        current_schema(),
        current_schemas(),
        pgc::create_pg_get_userbyid_udf(),
        pgc::create_pg_table_is_visible(),
        pgc::create_session_user_udf(),
        pgc::create_pg_get_partkeydef_udf(),
        pgc::create_pg_relation_is_publishable_udf(),
        pgc::create_pg_get_statisticsobjdef_columns_udf(),
        pgc::create_pg_encoding_to_char_udf(),
        pgc::create_pg_backend_pid_udf(),
        pgc::create_pg_relation_size_udf(),
        pgc::create_pg_total_relation_size_udf(),
        pgc::create_pg_stat_get_numscans(),
        pgc::create_pg_get_constraintdef(),
        pgc::create_pg_get_partition_ancestors_udf(),
        has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        format_type::create_format_type_udf(),
        pg_get_expr_udf::create_pg_get_expr_udf(),
        quote_ident_udf::create_quote_ident_udf(),
        quote_ident_udf::create_parse_ident_udf(),
        array_bounds_udf::create_array_upper_udf(),
        array_bounds_udf::create_array_lower_udf(),
    ] {
        ctx.register_udf(f);
    }
    ctx.register_udtf("pg_get_keywords", static_tables()?.pg_get_keywords.clone());
    Ok(())
}

/// `current_schema()`: the service's default schema, `lake` (the crate's says `public`, which is
/// not there; `'name'::regclass` looks names up in it).
fn current_schema() -> ScalarUDF {
    create_udf(
        "current_schema",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                SCHEMA.into(),
            ))))
        }),
    )
}

/// `current_schemas(implicit)`: the search path, `lake`, and with `implicit` the system schemas.
fn current_schemas() -> ScalarUDF {
    create_udf(
        "current_schemas",
        vec![DataType::Boolean],
        DataType::new_list(DataType::Utf8, true),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let implicit = match &args[0] {
                ColumnarValue::Scalar(ScalarValue::Boolean(b)) => b.unwrap_or(false),
                ColumnarValue::Array(a) => {
                    !a.is_empty() && a.is_valid(0) && a.as_boolean().value(0)
                }
                _ => false,
            };
            let mut schemas = vec![SCHEMA];
            if implicit {
                schemas.extend(["information_schema", PG_CATALOG]);
            }
            let list = SingleRowListArrayBuilder::new(Arc::new(StringArray::from(schemas)));
            Ok(ColumnarValue::Scalar(ScalarValue::List(Arc::new(
                list.build_list_array(),
            ))))
        }),
    )
}

/// A catalog list as `pg_catalog` sees it: its catalogs, schemas and tables in name order.
///
/// `pg_catalog` numbers them (their OIDs) in the order it lists them, afresh in each context, and
/// the service builds a new context whenever the lake moves on. DataFusion's in-memory providers
/// list in hash order, which differs between contexts: a client that read a table's OID and then
/// asked for its columns by that OID (psql's `\d`, DBeaver) found nothing when a refresh fell in
/// between. In name order, equal tables get equal OIDs in every context.
///
/// Held weakly: `pg_catalog` lives in the very catalog list it describes, so a strong reference
/// made a cycle, and no context was ever dropped. Every catalog refresh (twice a second) then kept
/// its whole context, and the live tier, which trims the rows that every catalog alive has in its
/// snapshot, stopped trimming: its mirror filled up and skipped polls, and fresh readings went
/// unseen for seconds (issue #26). A query holds its context's list while it runs, so the list is
/// there whenever `pg_catalog` is read.
#[derive(Debug, Clone)]
struct NameOrder(Weak<dyn CatalogProviderList>);

impl NameOrder {
    fn list(&self) -> Result<Arc<dyn CatalogProviderList>> {
        self.0
            .upgrade()
            .ok_or_else(|| DataFusionError::Execution("the catalog was replaced; ask again".into()))
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort_unstable();
    names
}

#[async_trait::async_trait]
impl CatalogInfo for NameOrder {
    async fn catalog_names(&self) -> Result<Vec<String>> {
        Ok(sorted(CatalogInfo::catalog_names(&self.list()?).await?))
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>> {
        Ok(self.list()?.schema_names(catalog).await?.map(sorted))
    }

    async fn table_names(&self, catalog: &str, schema: &str) -> Result<Option<Vec<String>>> {
        Ok(self.list()?.table_names(catalog, schema).await?.map(sorted))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>> {
        self.list()?.table_schema(catalog, schema, table).await
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>> {
        self.list()?.table_type(catalog, schema, table).await
    }
}

/// Registers `pg_catalog` in `ctx`'s catalog, listing the tables of `ctx`'s own catalog list,
/// and numbers them.
///
/// `pg_catalog` hands out OIDs from a counter, in the order its tables first meet an object:
/// `pg_class` numbers the catalog, then each schema and its tables; `pg_attribute` only the
/// tables. In a context whose first catalog read was `pg_attribute`, a table's OID was not the
/// one `pg_class` gave it in the context before, and psql's `\d` (a table's OID from `pg_class`,
/// then its columns by that OID from `pg_attribute`) described another table when a refresh fell
/// in between. Reading `pg_class` here numbers every object in [`NameOrder`], the same in every
/// context over the same tables, before any client reads.
pub async fn schema(ctx: &SessionContext) -> Result<()> {
    let provider = PgCatalogSchemaProvider::try_new(
        NameOrder(Arc::downgrade(ctx.state().catalog_list())),
        static_tables()?,
        EmptyContextProvider,
    )?;
    ctx.catalog(CATALOG)
        .ok_or_else(|| DataFusionError::Internal(format!("no catalog {CATALOG}")))?
        .register_schema(PG_CATALOG, Arc::new(provider))?;
    ctx.sql("SELECT oid FROM pg_catalog.pg_class")
        .await?
        .collect()
        .await?;
    Ok(())
}

/// The PostgreSQL clients' statements in `text`, rewritten into SQL that DataFusion plans (see
/// the module's notes); `None` where `text` does not parse that way (the gate's own parse then
/// gives the error, or accepts a dialect it knows).
pub fn compatible(text: &str) -> Option<Vec<Statement>> {
    static PARSER: OnceLock<PostgresCompatibilityParser> = OnceLock::new();
    PARSER
        .get_or_init(PostgresCompatibilityParser::new)
        .parse(text)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionConfig;

    /// A context like the service's, with `tables` (empty) in `hexpulse.lake`, registered in the
    /// order given, and `pg_catalog` over them.
    async fn context(tables: &[String]) -> SessionContext {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_default_catalog_and_schema(CATALOG, SCHEMA),
        );
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        for t in tables {
            let table = MemTable::try_new(
                schema.clone(),
                vec![vec![RecordBatch::new_empty(schema.clone())]],
            )
            .unwrap();
            ctx.register_table(t.as_str(), Arc::new(table)).unwrap();
        }
        super::schema(&ctx).await.unwrap();
        ctx
    }

    async fn oid(ctx: &SessionContext, table: &str) -> i64 {
        let b = ctx
            .sql(&format!("SELECT CAST(oid AS BIGINT) AS oid FROM pg_catalog.pg_class WHERE relname = '{table}'"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        crate::columns::i64s(&b[0], "oid")[0].unwrap()
    }

    /// The OID `ctx`'s `pg_attribute` gives the table with column `x`s, asked before anything
    /// else in `ctx`.
    async fn attrelids(ctx: &SessionContext) -> Vec<i64> {
        let b = ctx
            .sql("SELECT CAST(attrelid AS BIGINT) AS oid FROM pg_catalog.pg_attribute WHERE attname = 'x' ORDER BY 1")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        b.iter()
            .flat_map(|b| crate::columns::i64s(b, "oid"))
            .map(Option::unwrap)
            .collect()
    }

    /// The OIDs a client reads in one context name the same tables in the next (psql's `\d`
    /// reads a table's OID, then its columns by that OID, and the service may have built a new
    /// context in between).
    #[tokio::test]
    async fn oids_do_not_change_between_contexts() {
        let mut tables: Vec<String> = (0..24).map(|i| format!("t{i:02}")).collect();
        let a = context(&tables).await;
        tables.reverse();
        let b = context(&tables).await;
        for t in ["t00", "t07", "t23"] {
            assert_eq!(oid(&a, t).await, oid(&b, t).await, "{t}");
        }
    }

    /// A client that read a table's OID from `pg_class` in one context and asks `pg_attribute`
    /// for its columns in the next, where `pg_attribute` is the first catalog table read, finds
    /// that table's columns (psql's `\d` when a refresh falls between its two queries).
    #[tokio::test]
    async fn pg_attribute_first_numbers_as_pg_class_does() {
        let tables: Vec<String> = (0..3).map(|i| format!("t{i}")).collect();
        let a = context(&tables).await;
        let mut by_class = Vec::new();
        for t in &tables {
            by_class.push(oid(&a, t).await);
        }
        by_class.sort_unstable();
        assert_eq!(attrelids(&context(&tables).await).await, by_class);
    }
}

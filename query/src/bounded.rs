//! Bounds on the memory that one SQL expression can steer.
//!
//! DataFusion's memory pool covers operators (sorts, joins, aggregates), not the arrays that scalar
//! functions build: `repeat(s, 1e12)`, `lpad`, `array_repeat`, `range`, a chain of `||`, or constant
//! folding of any of them would allocate outside the pool, and an allocation failure aborts the
//! process. So every scalar function call of a query is wrapped in [`BoundedUdf`]:
//!
//! - **before** the call, the size of its result is estimated from its arguments (for functions
//!   whose result grows with an argument, by their own formula; for the rest, by the size of the
//!   arguments) and the call is refused past the bound;
//! - **after** the call, the result's size is checked against the same bound, so that a chain of
//!   calls that each grow by a constant factor stops at the first one past it.
//!
//! The bound is per query: `max_expression_bytes` divided among the query's calls whose result has
//! no fixed width (strings, binaries, lists, maps, structs), so that all of one batch's intermediate
//! results together stay near `max_expression_bytes` per thread. A refusal is
//! `ResourcesExhausted`, which the SQL endpoint answers with 413 `memory_limit`.
//!
//! Also here, because they are the same class of hole:
//! - SQL types with a huge fixed width (`INT[2000000000]`, `arrow_cast(.., 'FixedSizeBinary(..)')`)
//!   are refused while planning ([`WideTypes`], and the check in
//!   [`BoundedUdf::return_field_from_args`]);
//! - the string concatenation operator `||` is checked after each evaluation
//!   ([`CONCAT_CHECK`]);
//! - constant folding while planning (table function arguments are folded before the analyzer
//!   runs) uses the registry's functions, which carry the small [`PLANNING_BOUND`].

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue, plan_err};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, ExprSchemable, ExpressionPlacement,
    LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, StructFieldMapping, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, DataType as SqlType};

mod size;

pub use size::{array_bytes, batch_bytes, value_bytes};
use size::{estimate, human};

/// The bound of calls folded while the SQL text is planned (table function arguments), before the
/// analyzer gives each call its query's share: such arguments are numbers and times in the end.
pub const PLANNING_BOUND: u64 = 64 << 10;

/// The widest fixed-width row a query may declare or cast to (`FixedSizeList`, `FixedSizeBinary`).
pub const MAX_FIXED_ROW_BYTES: u64 = 1 << 20;

/// The name of the check wrapped around `||`.
pub const CONCAT_CHECK: &str = "hexpulse_bounded";

/// Installs the bounds on `ctx`: wraps every registered scalar function (bound
/// [`PLANNING_BOUND`]), and adds the analyzer rule that gives each call of a query its share of
/// `max_expression_bytes`.
pub fn install(ctx: &SessionContext, max_expression_bytes: u64) {
    let state = ctx.state();
    let functions: Vec<Arc<ScalarUDF>> = state.scalar_functions().values().cloned().collect();
    for f in functions {
        if f.inner().is::<BoundedUdf>() {
            continue;
        }
        ctx.register_udf(BoundedUdf::wrap(f.as_ref().clone(), PLANNING_BOUND));
    }
    ctx.add_analyzer_rule(Arc::new(BoundExpressions {
        budget: max_expression_bytes,
    }));
}

/// Refuses SQL array types with a huge fixed size (`INT[2000000000]`); other types go to the next
/// planner, if any, then plan as usual.
#[derive(Debug, Default)]
pub struct WideTypes {
    next: Option<Arc<dyn TypePlanner>>,
}

impl WideTypes {
    /// These checks, then `next` (PostgreSQL's type names: [`crate::pg::system::type_planner`]).
    pub fn then(next: Arc<dyn TypePlanner>) -> WideTypes {
        WideTypes { next: Some(next) }
    }
}

impl TypePlanner for WideTypes {
    fn plan_type_field(&self, sql_type: &SqlType) -> Result<Option<FieldRef>> {
        if let SqlType::Array(ArrayElemTypeDef::SquareBracket(_, Some(n))) = sql_type
            && *n > MAX_FIXED_ROW_BYTES
        {
            return plan_err!(
                "an array type of fixed size {n} is wider than {MAX_FIXED_ROW_BYTES}; use a list \
                 type without a size"
            );
        }
        match &self.next {
            Some(next) => next.plan_type_field(sql_type),
            None => Ok(None),
        }
    }
}

/// Bytes per row of a type of fixed width (`None` for strings, lists and other variable types).
pub fn fixed_row_bytes(t: &DataType) -> Option<u64> {
    match t {
        DataType::Null => Some(0),
        DataType::Boolean => Some(1),
        DataType::FixedSizeBinary(n) => Some((*n).max(0) as u64),
        DataType::FixedSizeList(f, n) => {
            fixed_row_bytes(f.data_type()).map(|w| w.max(1).saturating_mul((*n).max(0) as u64))
        }
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| fixed_row_bytes(f.data_type()))
            .sum::<Option<u64>>(),
        t => t.primitive_width().map(|w| w as u64),
    }
}

fn too_wide(t: &DataType) -> bool {
    fixed_row_bytes(t).is_some_and(|w| w > MAX_FIXED_ROW_BYTES)
        || match t {
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _)
            | DataType::Map(f, _) => too_wide(f.data_type()),
            DataType::Struct(fields) => fields.iter().any(|f| too_wide(f.data_type())),
            DataType::Dictionary(_, v) => too_wide(v),
            _ => false,
        }
}

fn refuse_wide(t: &DataType, what: &str) -> Result<()> {
    if too_wide(t) {
        return plan_err!(
            "{what} has the type {t}, whose rows are wider than {MAX_FIXED_ROW_BYTES} bytes"
        );
    }
    Ok(())
}

/// A scalar function with a bound on the size of its result per call (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BoundedUdf {
    inner: ScalarUDF,
    max: u64,
}

impl BoundedUdf {
    /// `f` bounded to `max` bytes per call; an already bounded `f` gets the new bound.
    pub fn wrap(f: ScalarUDF, max: u64) -> ScalarUDF {
        let inner = match f.inner().downcast_ref::<BoundedUdf>() {
            Some(b) => b.inner.clone(),
            None => f,
        };
        ScalarUDF::new_from_impl(BoundedUdf { inner, max })
    }

    fn refuse(&self, estimate: u64, rows: usize) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{}() would build about {} for {rows} rows, over this query's bound of {} per \
             expression (max_expression_bytes shared among the query's string and list \
             expressions); use smaller arguments or fewer rows",
            self.inner.name(),
            human(estimate),
            human(self.max)
        ))
    }

    /// Wraps the functions of `e` that are not yet bounded (a simplification may bring new ones).
    fn rewrap(&self, e: Expr) -> Result<Expr> {
        Ok(e.transform_up(|e| match e {
            Expr::ScalarFunction(sf) if !sf.func.inner().is::<BoundedUdf>() => {
                let func = Arc::new(BoundedUdf::wrap(sf.func.as_ref().clone(), self.max));
                Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
                    func,
                    args: sf.args,
                })))
            }
            e => Ok(Transformed::no(e)),
        })?
        .data)
    }
}

#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for BoundedUdf {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let t = self.inner.return_type(arg_types)?;
        refuse_wide(&t, self.inner.name())?;
        Ok(t)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let f = self.inner.return_field_from_args(args)?;
        refuse_wide(f.data_type(), self.inner.name())?;
        Ok(f)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let variable = fixed_row_bytes(args.return_type()).is_none();
        let estimate = if variable {
            estimate(self.inner.name(), &args.args, rows)
        } else {
            fixed_row_bytes(args.return_type())
                .unwrap_or(0)
                .saturating_mul(rows as u64)
        };
        if estimate > self.max {
            return Err(self.refuse(estimate, rows));
        }
        let out = self.inner.invoke_with_args(args)?;
        let size = value_bytes(&out, 1);
        if size > self.max {
            return Err(self.refuse(size, rows));
        }
        Ok(out)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.inner().with_updated_config(config)?;
        Some(BoundedUdf::wrap(updated, self.max))
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        Ok(match self.inner.simplify(args, info)? {
            ExprSimplifyResult::Simplified(e) => ExprSimplifyResult::Simplified(self.rewrap(e)?),
            ExprSimplifyResult::Original(args) => ExprSimplifyResult::Original(args),
        })
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

/// `hexpulse_bounded(x)`: x, refused past the bound. Wrapped around `||`, whose result is at most
/// the sum of its operands, so that a chain of `||` stops at the first result past the bound.
/// Its name in a schema is its argument's, so wrapping changes no column name.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatCheck {
    max: u64,
    signature: Signature,
}

impl ConcatCheck {
    fn udf(max: u64) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(ConcatCheck {
            max,
            signature: Signature::any(1, Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for ConcatCheck {
    fn name(&self) -> &str {
        CONCAT_CHECK
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args[0].to_string())
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args[0].schema_name().to_string())
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(args.arg_fields[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let out = args.args.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal(format!("{CONCAT_CHECK} takes one argument"))
        })?;
        let size = value_bytes(&out, 1);
        if size > self.max {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "`||` built about {} for {} rows, over this query's bound of {} per expression",
                human(size),
                args.number_rows,
                human(self.max)
            )));
        }
        Ok(out)
    }
}

/// The analyzer rule that bounds every call of a query (see the module docs).
#[derive(Debug)]
pub struct BoundExpressions {
    budget: u64,
}

fn is_string_concat(e: &Expr) -> bool {
    matches!(
        e,
        Expr::BinaryExpr(BinaryExpr {
            op: Operator::StringConcat,
            ..
        })
    )
}

/// The schema that the expressions of `node` refer to.
fn expr_schema(node: &LogicalPlan) -> DFSchema {
    let inputs = node.inputs();
    if inputs.is_empty() {
        node.schema().as_ref().clone()
    } else {
        merge_schema(&inputs)
    }
}

impl AnalyzerRule for BoundExpressions {
    fn name(&self) -> &str {
        "hexpulse_bound_expressions"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        // Pass 1: refuse huge fixed-width types, and count the calls with variable-width results.
        let mut variable = 0u64;
        plan.apply_with_subqueries(|node| {
            for f in node.schema().fields() {
                refuse_wide(f.data_type(), &format!("column {}", f.name()))?;
            }
            let schema = expr_schema(node);
            node.apply_expressions(|e| {
                e.apply(|e| {
                    match e {
                        Expr::Cast(c) => refuse_wide(c.field.data_type(), "a cast")?,
                        Expr::TryCast(c) => refuse_wide(c.field.data_type(), "a cast")?,
                        e if matches!(e, Expr::ScalarFunction(_)) || is_string_concat(e) => {
                            let fixed = e
                                .get_type(&schema)
                                .ok()
                                .is_some_and(|t| fixed_row_bytes(&t).is_some());
                            if !fixed {
                                variable += 1;
                            }
                        }
                        _ => {}
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        let max = self.budget / variable.max(1);
        // Pass 2: wrap.
        let out = plan.transform_up_with_subqueries(|node| {
            node.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::ScalarFunction(sf) => {
                        let func = Arc::new(BoundedUdf::wrap(sf.func.as_ref().clone(), max));
                        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
                            func,
                            args: sf.args,
                        })))
                    }
                    e if is_string_concat(&e) => Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(ConcatCheck::udf(max), vec![e]),
                    ))),
                    e => Ok(Transformed::no(e)),
                })
            })
        })?;
        Ok(out.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(sql: &str, budget: u64) -> Result<usize> {
        let ctx = SessionContext::new();
        crate::udf::register(&ctx, 12);
        install(&ctx, budget);
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    fn exhausted(r: &Result<usize>) -> bool {
        matches!(
            r.as_ref().map_err(|e| e.find_root()),
            Err(DataFusionError::ResourcesExhausted(_))
        )
    }

    #[tokio::test]
    async fn growing_functions_are_refused_before_they_allocate() {
        for sql in [
            "SELECT length(repeat(arrow_cast('x', 'LargeUtf8'), 1000000000000))",
            "SELECT repeat('ab', 100000000)",
            "SELECT lpad('x', 1000000000)",
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "SELECT cardinality(range(1, 10000000000))",
            "SELECT replace(repeat('x', 1000), 'x', repeat('y', 100000))",
            "SELECT h3_grid_disk(h3_latlng_to_cell(v * 0.0001, 0, 12), 64) \
             FROM generate_series(1, 8000) AS t(v)",
        ] {
            let r = run(sql, 16 << 20).await;
            assert!(exhausted(&r), "{sql}: {r:?}");
        }
        assert_eq!(run("SELECT repeat('ab', 1000)", 16 << 20).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_chain_of_concatenations_stops_at_the_bound() {
        let mut sql = String::from("WITH t0 AS (SELECT repeat('x', 1000) AS s)");
        for i in 1..40 {
            sql.push_str(&format!(", t{i} AS (SELECT s || s AS s FROM t{})", i - 1));
        }
        sql.push_str(" SELECT length(s) FROM t39");
        let r = run(&sql, 16 << 20).await;
        assert!(exhausted(&r), "{r:?}");
        let ok = "WITH a AS (SELECT 'x' || 'y' AS s) SELECT s || s AS s FROM a";
        assert_eq!(run(ok, 16 << 20).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn huge_fixed_width_types_are_refused() {
        for sql in [
            "SELECT arrow_cast(NULL, 'FixedSizeList(1000000000, Int64)')",
            "SELECT CAST(NULL AS INT[2000000000])",
        ] {
            let ctx = SessionContext::new_with_state(
                datafusion::execution::SessionStateBuilder::new()
                    .with_default_features()
                    .with_type_planner(Arc::new(WideTypes::default()))
                    .build(),
            );
            install(&ctx, 16 << 20);
            let r = match ctx.sql(sql).await {
                Ok(df) => df.collect().await.map(|_| ()),
                Err(e) => Err(e),
            };
            let e = r.expect_err(sql);
            assert!(e.to_string().contains("wider than"), "{sql}: {e}");
        }
    }

    #[test]
    fn sizes_count_the_slice_not_the_shared_buffers() {
        let a = datafusion::arrow::array::StringArray::from(vec!["a".repeat(1000); 100]);
        let whole = array_bytes(&a);
        assert_eq!(whole, 100 * 1000 + 400);
        assert_eq!(array_bytes(&a.slice(0, 1)), 1000 + 4);
    }
}

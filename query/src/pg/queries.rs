//! The simple and the extended query protocol, over the gate: statements are planned and run by
//! [`Gate`], and their answers stream as rows while the plan runs (arrow-pg encodes them).

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::Statement;
use futures::{Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use super::{Session, pg_error};
use crate::gate::Gate;
use crate::sql::SqlError;

/// What a statement is, as the door sees it.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A query for the gate: its parameters' types (inferred by the plan) and its answer's schema.
    Query {
        params: Vec<Option<DataType>>,
        schema: SchemaRef,
    },
    /// `BEGIN`, `COMMIT`, `ROLLBACK`: accepted, nothing to do (every statement only reads).
    Transaction { tag: &'static str, starts: bool },
}

/// A parsed statement of the extended protocol.
#[derive(Debug, Clone)]
pub(crate) struct PgStatement {
    sql: String,
    kind: Kind,
}

pub(crate) struct Queries {
    gate: Arc<Gate>,
    max_rows: usize,
    parser: Arc<PgParser>,
}

impl Queries {
    pub(crate) fn new(gate: Arc<Gate>, max_rows: usize) -> Queries {
        Queries {
            parser: Arc::new(PgParser { gate: gate.clone() }),
            gate,
            max_rows,
        }
    }
}

fn session<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client.session_extensions().get::<Session>().ok_or_else(|| {
        pg_error(
            &SqlError::new(401, "unauthorized", "the connection has not logged in"),
            true,
        )
    })
}

/// `BEGIN`/`START TRANSACTION`, `COMMIT`/`END`, `ROLLBACK`, recognised by their parse.
fn transaction(statement: &Statement) -> Option<Kind> {
    match statement {
        Statement::StartTransaction { .. } => Some(Kind::Transaction {
            tag: "BEGIN",
            starts: true,
        }),
        Statement::Commit { .. } => Some(Kind::Transaction {
            tag: "COMMIT",
            starts: false,
        }),
        Statement::Rollback { .. } => Some(Kind::Transaction {
            tag: "ROLLBACK",
            starts: false,
        }),
        _ => None,
    }
}

fn transaction_response(kind: &Kind) -> Option<Response> {
    match kind {
        Kind::Transaction { tag, starts: true } => Some(Response::TransactionStart(Tag::new(tag))),
        Kind::Transaction { tag, starts: false } => Some(Response::TransactionEnd(Tag::new(tag))),
        Kind::Query { .. } => None,
    }
}

/// The statements of a query's text, each as SQL for the gate: rewritten from what PostgreSQL's
/// clients send into what DataFusion plans ([`super::system::compatible`]). A text that does not
/// parse that way is passed whole to the gate, whose own parse gives the error (or accepts a
/// dialect the service knows).
fn split(text: &str) -> Vec<(String, Option<Kind>)> {
    match super::system::compatible(text) {
        Some(statements) if !statements.is_empty() => statements
            .iter()
            .map(|s| (s.to_string(), transaction(s)))
            .collect(),
        _ => vec![(text.to_string(), None)],
    }
}

impl Queries {
    /// Runs one statement through the gate; its rows stream to the client as the plan makes them.
    async fn run(
        &self,
        session: &Session,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let gate = &self.gate;
        gate.spend(&session.caller, &session.peer)
            .map_err(|e| pg_error(&e, false))?;
        let cancel = session.start_statement();
        let answer = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(crate::gate::cancelled()),
            a = gate.query(sql, params, session.allow_raw, self.max_rows) => a,
        }
        .map_err(|e| pg_error(&e, false))?;
        let fields = Arc::new(arrow_schema_to_pg_fields(&answer.schema, format, None)?);
        let row_fields = fields.clone();
        let rows = answer.until(cancel).flat_map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                Ok(b) => encode_recordbatch(row_fields.clone(), b),
                Err(e) => Box::new(std::iter::once(Err(pg_error(&e, false)))),
            };
            futures::stream::iter(rows)
        });
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let mut out = Vec::new();
        for (sql, kind) in split(query) {
            match kind.as_ref().and_then(transaction_response) {
                Some(r) => out.push(r),
                None => {
                    out.push(self.run(&session, &sql, None, &Format::UnifiedText).await?);
                }
            }
        }
        Ok(out)
    }
}

/// Plans a statement when the client parses it: its parameters and its answer's columns.
pub(crate) struct PgParser {
    gate: Arc<Gate>,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session(client)?;
        // One statement (a text of several goes whole to the gate, which refuses it).
        let sql = match split(sql).as_slice() {
            [(_, Some(kind))] => {
                return Ok(Some(PgStatement {
                    sql: sql.to_string(),
                    kind: kind.clone(),
                }));
            }
            [(one, None)] => one.clone(),
            _ => sql.to_string(),
        };
        let described = self
            .gate
            .describe(&sql, session.allow_raw)
            .await
            .map_err(|e| pg_error(&e, false))?;
        Ok(Some(PgStatement {
            sql,
            kind: Kind::Query {
                params: described.params,
                schema: described.schema,
            },
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        match &stmt.kind {
            Kind::Query { params, .. } => Ok(params
                .iter()
                .map(|p| {
                    p.as_ref()
                        .and_then(|t| into_pg_type(t).ok())
                        .unwrap_or(Type::UNKNOWN)
                })
                .collect()),
            Kind::Transaction { .. } => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.kind {
            Kind::Query { schema, .. } => arrow_schema_to_pg_fields(
                schema,
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            Kind::Transaction { .. } => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = PgStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let statement = &portal.statement.statement;
        let params = match &statement.kind {
            Kind::Query { params, .. } => params,
            kind => return Ok(transaction_response(kind).expect("a transaction")),
        };
        let values = if portal.parameter_len() == 0 {
            None
        } else {
            Some(parameters(portal, params)?)
        };
        self.run(
            &session,
            &statement.sql,
            values,
            &portal.result_column_format,
        )
        .await
    }
}

fn bad_parameter(i: usize, why: impl std::fmt::Display) -> PgWireError {
    pg_error(
        &SqlError::new(400, "bad_param", format!("parameter ${}: {why}", i + 1)),
        false,
    )
}

/// The bound values of `portal`'s parameters, each decoded by its type: the client's, else the
/// plan's (the gate casts each to the plan's type).
fn parameters(
    portal: &Portal<PgStatement>,
    inferred: &[Option<DataType>],
) -> PgWireResult<Vec<ScalarValue>> {
    let mut values = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let declared = portal
            .statement
            .parameter_types
            .get(i)
            .cloned()
            .flatten()
            .filter(|t| *t != Type::UNKNOWN);
        let pg_type = declared
            .or_else(|| {
                inferred
                    .get(i)
                    .cloned()
                    .flatten()
                    .and_then(|t| into_pg_type(&t).ok())
            })
            .unwrap_or(Type::UNKNOWN);
        values.push(decode(portal, i, &pg_type)?);
    }
    Ok(values)
}

/// One parameter's value as its PostgreSQL type says (text or binary format alike); a type
/// without a case here is read as text, and cast by the gate.
fn decode(portal: &Portal<PgStatement>, i: usize, t: &Type) -> PgWireResult<ScalarValue> {
    let err = |e: PgWireError| bad_parameter(i, e);
    Ok(match *t {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, t).map_err(err)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, t).map_err(err)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, t).map_err(err)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, t).map_err(err)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, t).map_err(err)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, t).map_err(err)?),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::NaiveDateTime>(i, t)
                .map_err(err)?
                .map(|v| v.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, t)
                .map_err(err)?
                .map(|v| v.timestamp_micros()),
            Some("+00:00".into()),
        ),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<chrono::NaiveDate>(i, t)
                .map_err(err)?
                .map(|d| {
                    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days()
                        as i32
                }),
        ),
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(i, t).map_err(err)?),
        _ => {
            // Text, varchar, unknown and every other type: the text, cast to the plan's type.
            let text = match portal.parameters.get(i).cloned().flatten() {
                None => None,
                Some(bytes) if !portal.parameter_format.is_binary(i) => Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| bad_parameter(i, "the value is not UTF-8"))?,
                ),
                Some(_) => {
                    return Err(bad_parameter(
                        i,
                        format!(
                            "type {} is not accepted in binary format; send it as text",
                            t.name()
                        ),
                    ));
                }
            };
            ScalarValue::Utf8(text)
        }
    })
}

//! The Arrow Flight SQL door (`[query] flight_listen`): ADBC, JDBC and the `arrow-flight` CLI get
//! answers as Arrow record batches, streamed as the plan makes them.
//!
//! Every rule is the gate's ([`crate::gate`]), as for `POST /v1/sql`: a bearer token in the
//! `authorization` header (or Flight's handshake with basic auth: user = anything, password = a
//! token, answered with the bearer to send next), the `sql` group, the `raw` group on the plan,
//! read-only plans, slots, limits and per-token rates. Refusals carry gRPC codes
//! ([`status`]). A dropped stream drops the answer, which stops the plan and frees its slot.
//!
//! Statement queries and prepared statements (a handle holds the SQL and any bound parameters,
//! nothing is kept on the server), `GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetTableTypes` and
//! `GetSqlInfo` for clients that browse. Freshness rides on every answer as the
//! `hexpulse-freshness` header (JSON), as on HTTP.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::gate::{Credential, Gate};
use crate::sql::SqlError;

/// The gRPC status of a gate's refusal or a query's failure.
pub fn status(e: &SqlError) -> Status {
    let message = format!("{} ({})", e.message, e.code);
    match e.status {
        401 => Status::unauthenticated(message),
        403 => Status::permission_denied(message),
        408 => Status::deadline_exceeded(message),
        499 => Status::cancelled(message),
        413 | 429 | 503 => Status::resource_exhausted(message),
        s if s >= 500 => Status::internal(message),
        _ => Status::invalid_argument(message),
    }
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// A prepared statement's handle: the SQL, and the parameters bound to it (one row, Arrow IPC,
/// hex). The server keeps nothing between calls.
#[derive(serde::Serialize, serde::Deserialize)]
struct Handle {
    sql: String,
    #[serde(default)]
    params: Option<String>,
}

impl Handle {
    fn decode(bytes: &[u8]) -> Result<Handle, Status> {
        serde_json::from_slice(bytes).map_err(|_| {
            Status::invalid_argument("not a prepared statement handle of this service")
        })
    }

    fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The bound parameters as the gate takes them.
    fn values(&self) -> Result<Option<Vec<ScalarValue>>, Status> {
        let Some(hex_ipc) = &self.params else {
            return Ok(None);
        };
        let bytes = hex::decode(hex_ipc).map_err(|_| Status::invalid_argument("bad handle"))?;
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let mut values = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
            if batch.num_rows() == 0 {
                continue;
            }
            for column in batch.columns() {
                let v = ScalarValue::try_from_array(column, 0)
                    .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
                values.push(v);
            }
            break;
        }
        Ok(Some(values))
    }
}

pub(crate) struct FlightDoor {
    gate: Arc<Gate>,
    max_rows: usize,
    info: SqlInfoData,
}

impl FlightDoor {
    pub(crate) fn new(gate: Arc<Gate>, max_rows: usize) -> FlightDoor {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "hexpulse");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
        FlightDoor {
            gate,
            max_rows,
            info: b.build().expect("static SQL info"),
        }
    }

    /// The caller of `req`, admitted for the `sql` group: whether it may read raw rows.
    fn admit<T>(&self, req: &Request<T>) -> Result<bool, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = self
            .gate
            .admit(Credential::Header(auth), "sql", &peer(req))
            .map_err(|e| status(&e))?;
        Ok(self.gate.allows_raw(&caller))
    }

    /// Every schema the caller's SQL can name: (catalog, schema name, schema).
    fn schemas(
        &self,
        allow_raw: bool,
    ) -> Vec<(String, String, Arc<dyn datafusion::catalog::SchemaProvider>)> {
        let ctx = self.gate.catalog.sql_context(allow_raw);
        let mut out = Vec::new();
        for catalog in ctx.catalog_names() {
            let Some(c) = ctx.catalog(&catalog) else {
                continue;
            };
            for name in c.schema_names() {
                if let Some(schema) = c.schema(&name) {
                    out.push((catalog.clone(), name, schema));
                }
            }
        }
        out
    }

    /// The FlightInfo of a browsing command (its answer's `schema`), for an admitted caller.
    fn browse_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: impl ProstMessageExt,
    ) -> Result<Response<FlightInfo>, Status> {
        self.admit(&request)?;
        info_for(schema, command, request.into_inner())
    }

    /// Runs `sql` and streams its batches as Flight data.
    async fn run(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        allow_raw: bool,
    ) -> Result<Response<DoGetStream>, Status> {
        let answer = self
            .gate
            .query(sql, params, allow_raw, self.max_rows)
            .await
            .map_err(|e| status(&e))?;
        let schema = answer.schema.clone();
        let batches = answer.map_err(|e| FlightError::Tonic(Box::new(status(&e))));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        let mut response = Response::new(Box::pin(data) as DoGetStream);
        if let Ok(v) = self.freshness().parse() {
            response.metadata_mut().insert("hexpulse-freshness", v);
        }
        Ok(response)
    }

    /// What the answers hold, as HTTP answers say it: the lake's watermark, when the live rows
    /// were last read, the catalog's version.
    fn freshness(&self) -> String {
        let (_, snap) = self.gate.catalog.context();
        crate::http::freshness(&snap, None).to_string()
    }
}

/// The rate-limit key of a request's client address (`ip:<address>`).
fn peer<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "ip:?".to_string(),
            |c| format!("ip:{}", hexpulse_common::ratelimit::client_key(c.0.ip())),
        )
}

/// A FlightInfo whose one endpoint's ticket is `ticket` (a command the client sends back to
/// `DoGet`), with the answer's `schema`.
fn info_for(
    schema: &Schema,
    ticket: impl ProstMessageExt,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// One batch as a DoGet answer.
fn one_batch(
    batch: Result<RecordBatch, impl std::fmt::Display>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let schema = batch.schema();
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(data) as DoGetStream))
}

#[tonic::async_trait]
impl FlightSqlService for FlightDoor {
    type FlightService = FlightDoor;

    /// Basic auth (user: anything; password: a token) answered with the bearer to send next.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        use base64::Engine;
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = match header.strip_prefix("Basic ") {
            Some(b64) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| {
                        Status::invalid_argument("basic auth must be base64 of user:password")
                    })?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| Status::invalid_argument("basic auth is not UTF-8"))?;
                text.split_once(':')
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default()
            }
            None => header.strip_prefix("Bearer ").unwrap_or("").to_string(),
        };
        self.gate
            .admit(Credential::Token(&token), "sql", &peer(&request))
            .map_err(|e| status(&e))?;
        let bearer = format!("Bearer {token}");
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response = Response::new(Box::pin(futures::stream::iter([Ok(answer)]))
            as Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>);
        if let Ok(v) = bearer.parse() {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let allow_raw = self.admit(&request)?;
        let described = self
            .gate
            .describe(&query.query, allow_raw)
            .await
            .map_err(|e| status(&e))?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        info_for(&described.schema, ticket, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let allow_raw = self.admit(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not UTF-8 SQL"))?;
        self.run(&sql, None, allow_raw).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let allow_raw = self.admit(&request)?;
        let described = self
            .gate
            .describe(&query.query, allow_raw)
            .await
            .map_err(|e| status(&e))?;
        let params = Schema::new(
            described
                .params
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    datafusion::arrow::datatypes::Field::new(
                        format!("${}", i + 1),
                        t.clone()
                            .unwrap_or(datafusion::arrow::datatypes::DataType::Utf8),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let options = IpcWriteOptions::default();
        let ipc = |s: &Schema| -> Result<bytes::Bytes, Status> {
            let msg: IpcMessage = SchemaAsIpc::new(s, &options).try_into().map_err(
                |e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()),
            )?;
            Ok(msg.0)
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle {
                sql: query.query,
                params: None,
            }
            .encode(),
            dataset_schema: ipc(&described.schema)?,
            parameter_schema: ipc(&params)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.admit(&request)?;
        Ok(())
    }

    /// Binds parameters: the new handle carries them.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.admit(&request)?;
        let mut handle = Handle::decode(&query.prepared_statement_handle)?;
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let mut ipc = Vec::new();
        if let Some(batch) = batches.next().await {
            let batch = batch.map_err(Status::from)?;
            let mut w =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            w.write(&batch.slice(0, batch.num_rows().min(1)))
                .and_then(|_| w.finish())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        handle.params = (!ipc.is_empty()).then(|| hex::encode(&ipc));
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let allow_raw = self.admit(&request)?;
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let described = self
            .gate
            .describe(&handle.sql, allow_raw)
            .await
            .map_err(|e| status(&e))?;
        info_for(&described.schema, query, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let allow_raw = self.admit(&request)?;
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let values = handle.values()?;
        self.run(&handle.sql, values, allow_raw).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.browse_info(request, &query.into_builder().schema(), query)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.admit(&request)?;
        let mut b = query.into_builder();
        b.append(crate::catalog::CATALOG);
        one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.browse_info(request, &query.clone().into_builder().schema(), query)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let allow_raw = self.admit(&request)?;
        let mut b = query.into_builder();
        for (catalog, schema, _) in self.schemas(allow_raw) {
            b.append(catalog, schema);
        }
        one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.browse_info(request, &query.clone().into_builder().schema(), query)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let allow_raw = self.admit(&request)?;
        let mut b = query.into_builder();
        for (catalog, schema_name, schema) in self.schemas(allow_raw) {
            for table in schema.table_names() {
                let Ok(Some(provider)) = schema.table(&table).await else {
                    continue;
                };
                let kind = if schema_name == "information_schema" {
                    "VIEW"
                } else {
                    "TABLE"
                };
                b.append(&catalog, &schema_name, &table, kind, &provider.schema())
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.browse_info(request, &query.into_builder().schema(), query)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.admit(&request)?;
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        one_batch(b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.browse_info(
            request,
            &query.clone().into_builder(&self.info).schema(),
            query,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.admit(&request)?;
        one_batch(query.into_builder(&self.info).build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The door's routes, served by the query service's own listener code (connection limits,
/// graceful shutdown) on `flight_listen`.
pub(crate) fn router(gate: Arc<Gate>, max_rows: usize) -> axum::Router {
    let service = FlightServiceServer::new(FlightDoor::new(gate, max_rows));
    tonic::service::Routes::new(service).into_axum_router()
}

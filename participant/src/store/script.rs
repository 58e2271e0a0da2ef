//! Statements a batch sends together, in one round trip either way.
//!
//! - SQLite: sqlx runs every statement on the connection's worker thread,
//!   and each round trip there and back costs far more than a small
//!   statement itself when the machine is busy; so a script goes as ONE
//!   multi-statement query, each statement's `$N` placeholders renumbered
//!   into one argument list, and each statement sees the writes of those
//!   before it.
//! - PostgreSQL (no multi-statement prepared queries): a script goes as ONE
//!   statement, each of its statements a data-modifying CTE (`WITH s0 AS
//!   (UPDATE ... RETURNING 1), s1 AS (...) SELECT (SELECT count(*) FROM s0),
//!   ...`). All of them then read the database as it was before the
//!   statement, so the caller may fuse a script only when no statement
//!   reads or writes a row another one writes (`Script::separate` says it
//!   may not: then each goes as a statement of its own, in order). One
//!   round trip instead of one per statement: at 64 clients a participant
//!   batch made about seven, each 0.9–5 ms under load.
//!
//! Either way the caller gets each statement's changed row count (writes)
//! or its single text value (queries), in order, and checks them itself; a
//! database error stops the script and fails the batch.

use futures::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Either, Executor, Row};

use crate::config::Backend;
use crate::error::StoreError;

/// A value bound to a placeholder.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// What a statement gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// INSERT/UPDATE: the rows it changed.
    Write,
    /// SELECT of one row of one text column.
    Query,
}

/// One statement: SQL with placeholders `$1..$n` (n = `args.len()`), its
/// arguments in order.
#[derive(Debug)]
struct Statement {
    sql: String,
    args: Vec<Arg>,
    kind: Kind,
}

/// What one statement of a script did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A write's changed rows.
    pub rows_affected: u64,
    /// A query's value; None if it returned no row or NULL.
    pub text: Option<String>,
}

/// Statements to send together, in order.
#[derive(Debug, Default)]
pub struct Script {
    statements: Vec<Statement>,
    /// Each statement must see the writes of those before it (PostgreSQL:
    /// do not fuse them into one).
    separate: bool,
}

impl Script {
    /// Adds an INSERT or UPDATE (without RETURNING); returns its index in
    /// the outcomes, which hold the rows it changed.
    pub fn push(&mut self, sql: impl Into<String>, args: Vec<Arg>) -> usize {
        self.add(sql.into(), args, Kind::Write)
    }

    /// Adds a SELECT of at most one row of one text column; returns its
    /// index in the outcomes, which hold that value.
    pub fn push_query(&mut self, sql: impl Into<String>, args: Vec<Arg>) -> usize {
        self.add(sql.into(), args, Kind::Query)
    }

    fn add(&mut self, sql: String, args: Vec<Arg>, kind: Kind) -> usize {
        self.statements.push(Statement { sql, args, kind });
        self.statements.len() - 1
    }

    /// Says that a statement reads or writes rows an earlier one writes,
    /// so each must see the writes before it.
    pub fn separate(&mut self) {
        self.separate = true;
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Tests: PostgreSQL's plan of each statement, as `EXPLAIN` prints it.
    #[cfg(test)]
    pub async fn explain(&self, conn: &mut AnyConnection) -> Result<Vec<String>, StoreError> {
        let mut plans = Vec::with_capacity(self.statements.len());
        for statement in &self.statements {
            let sql = format!("EXPLAIN {}", statement.sql);
            let rows = bind(sqlx::query(&sql), statement.args.clone())
                .fetch_all(&mut *conn)
                .await?;
            let lines = rows
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()?;
            plans.push(lines.join("\n"));
        }
        Ok(plans)
    }

    /// Runs every statement; one outcome per statement, in order.
    pub async fn run(
        self,
        conn: &mut AnyConnection,
        backend: Backend,
    ) -> Result<Vec<Outcome>, StoreError> {
        match backend {
            Backend::Sqlite => self.run_as_one(conn).await,
            Backend::Postgres if self.separate || self.statements.len() == 1 => {
                let mut outcomes = Vec::with_capacity(self.statements.len());
                for statement in self.statements {
                    let kinds = [statement.kind];
                    let mut one = run(conn, &statement.sql, statement.args, &kinds).await?;
                    outcomes.push(one.pop().expect("one statement gives one outcome"));
                }
                Ok(outcomes)
            }
            Backend::Postgres => self.run_fused(conn).await,
        }
    }

    async fn run_as_one(self, conn: &mut AnyConnection) -> Result<Vec<Outcome>, StoreError> {
        let kinds: Vec<Kind> = self.statements.iter().map(|s| s.kind).collect();
        let mut sql = String::new();
        let mut args = Vec::new();
        for statement in self.statements {
            sql.push_str(&renumber(&statement.sql, args.len()));
            sql.push_str(";\n");
            args.extend(statement.args);
        }
        run(conn, &sql, args, &kinds).await
    }

    /// PostgreSQL: every statement as a CTE of one statement, whose one row
    /// holds each write's row count and each query's value.
    async fn run_fused(self, conn: &mut AnyConnection) -> Result<Vec<Outcome>, StoreError> {
        let count = self.statements.len();
        let mut sql = String::from("WITH ");
        let mut select = String::from("SELECT ");
        let mut args = Vec::new();
        let mut kinds = Vec::with_capacity(count);
        for (i, statement) in self.statements.into_iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
                select.push_str(", ");
            }
            let body = renumber(&statement.sql, args.len());
            match statement.kind {
                Kind::Write => {
                    sql.push_str(&format!("s{i} AS ({body} RETURNING 1)"));
                    select.push_str(&format!("(SELECT count(*) FROM s{i})"));
                }
                Kind::Query => {
                    sql.push_str(&format!("s{i} AS ({body})"));
                    select.push_str(&format!("(SELECT * FROM s{i})::text"));
                }
            }
            args.extend(statement.args);
            kinds.push(statement.kind);
        }
        sql.push(' ');
        sql.push_str(&select);
        let row = bind(sqlx::query(&sql), args).fetch_one(&mut *conn).await?;
        kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                Ok(match kind {
                    Kind::Write => Outcome {
                        rows_affected: u64::try_from(row.try_get::<i64, _>(i)?)
                            .expect("count(*) is never negative"),
                        text: None,
                    },
                    Kind::Query => Outcome {
                        rows_affected: 0,
                        text: row.try_get(i)?,
                    },
                })
            })
            .collect()
    }
}

/// A query with its arguments bound in order.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind(mut query: AnyQuery<'_>, args: Vec<Arg>) -> AnyQuery<'_> {
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
        };
    }
    query
}

/// Runs `sql` (one statement per entry of `kinds`) and collects each
/// statement's outcome.
async fn run(
    conn: &mut AnyConnection,
    sql: &str,
    args: Vec<Arg>,
    kinds: &[Kind],
) -> Result<Vec<Outcome>, StoreError> {
    let results = each_statement(conn, bind(sqlx::query(sql), args), kinds.len()).await?;
    results
        .into_iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, ((rows, rows_affected), kind))| {
            let text = match (kind, rows.as_slice()) {
                (_, []) => None,
                (Kind::Query, [row]) => row.try_get(0)?,
                _ => {
                    return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                        "statement {i} of a script returned rows it should not"
                    ))))
                }
            };
            Ok(Outcome {
                rows_affected,
                text,
            })
        })
        .collect()
}

/// Runs a query string of `count` statements; each statement's rows and
/// changed row count, in order.
pub(super) async fn each_statement(
    conn: &mut AnyConnection,
    query: AnyQuery<'_>,
    count: usize,
) -> Result<Vec<(Vec<AnyRow>, u64)>, StoreError> {
    let mut results = Vec::with_capacity(count);
    let mut rows = Vec::new();
    // sqlx-sqlite runs every statement of a query string, binding `$N` by
    // number across them (sqlx calls this behaviour deprecated, in favour of
    // argument-less `raw_sql`); the count check below fails loudly if a
    // future sqlx stops doing so.
    let mut stream = conn.fetch_many(query);
    while let Some(item) = stream.try_next().await? {
        match item {
            Either::Right(row) => rows.push(row),
            Either::Left(done) => results.push((std::mem::take(&mut rows), done.rows_affected())),
        }
    }
    if results.len() != count {
        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "a query of {count} statements reported {} outcomes",
            results.len()
        ))));
    }
    Ok(results)
}

/// `sql` with every placeholder `$n` turned into `$(n + offset)`.
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let n: usize = rest[..digits].parse().expect("ASCII digits parse");
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_and_nothing_else() {
        assert_eq!(renumber("SELECT $1, $2", 0), "SELECT $1, $2");
        assert_eq!(
            renumber(
                "UPDATE t SET a = $1 WHERE b IN (SELECT value FROM json_each($12)) AND c = '$'",
                3
            ),
            "UPDATE t SET a = $4 WHERE b IN (SELECT value FROM json_each($15)) AND c = '$'"
        );
    }
}

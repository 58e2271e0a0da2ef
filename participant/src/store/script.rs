//! Statements a batch sends together.
//!
//! - SQLite: the batch runs on its writer lane's thread (`lane.rs`), where a
//!   statement costs no round trip: each statement runs on its own, in
//!   order, each seeing the writes of those before it.
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

#[cfg(test)]
use sqlx::{AnyConnection, Row};

use super::conn::{Col, Conn, Val};
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
        conn: &mut Conn<'_>,
        backend: Backend,
    ) -> Result<Vec<Outcome>, StoreError> {
        match backend {
            Backend::Postgres if !self.separate && self.statements.len() > 1 => {
                self.run_fused(conn).await
            }
            Backend::Sqlite | Backend::Postgres => {
                let mut outcomes = Vec::with_capacity(self.statements.len());
                for statement in self.statements {
                    outcomes.push(run_one(conn, &statement).await?);
                }
                Ok(outcomes)
            }
        }
    }

    /// PostgreSQL: every statement as a CTE of one statement, whose one row
    /// holds each write's row count and each query's value.
    async fn run_fused(self, conn: &mut Conn<'_>) -> Result<Vec<Outcome>, StoreError> {
        let count = self.statements.len();
        let mut sql = String::from("WITH ");
        let mut select = String::from("SELECT ");
        let mut args = Vec::new();
        let mut cols = Vec::with_capacity(count);
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
                    cols.push(Col::Int);
                }
                Kind::Query => {
                    sql.push_str(&format!("s{i} AS ({body})"));
                    select.push_str(&format!("(SELECT * FROM s{i})::text"));
                    cols.push(Col::Text);
                }
            }
            args.extend(statement.args);
        }
        sql.push(' ');
        sql.push_str(&select);
        let Some(row) = conn.fetch_optional(&sql, &args, &cols).await? else {
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "a fused script returned no row".into(),
            )));
        };
        row.into_iter()
            .map(|value| {
                Ok(match value {
                    Val::Int(count) => Outcome {
                        rows_affected: u64::try_from(count).expect("count(*) is never negative"),
                        text: None,
                    },
                    other => Outcome {
                        rows_affected: 0,
                        text: other.opt_text()?,
                    },
                })
            })
            .collect()
    }
}

/// One statement on its own: a write's changed rows, or a query's value.
async fn run_one(conn: &mut Conn<'_>, statement: &Statement) -> Result<Outcome, StoreError> {
    match statement.kind {
        Kind::Write => Ok(Outcome {
            rows_affected: conn.execute(&statement.sql, &statement.args).await?,
            text: None,
        }),
        Kind::Query => {
            let row = conn
                .fetch_optional(&statement.sql, &statement.args, &[Col::Text])
                .await?;
            let text = match row {
                Some(mut values) => values.pop().expect("one column").opt_text()?,
                None => None,
            };
            Ok(Outcome {
                rows_affected: 0,
                text,
            })
        }
    }
}

/// A query with its arguments bound in order.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub(super) fn bind(mut query: AnyQuery<'_>, args: Vec<Arg>) -> AnyQuery<'_> {
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
        };
    }
    query
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

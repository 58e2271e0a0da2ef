//! Statements a batch sends together. On SQLite, sqlx runs every statement
//! on the connection's worker thread, and each round trip there and back
//! costs far more than a small statement itself when the machine is busy;
//! so a script goes as ONE multi-statement query (one round trip), each
//! statement's `$N` placeholders renumbered into one argument list. On
//! PostgreSQL (no multi-statement prepared queries) it goes one statement
//! at a time. Either way the caller gets each statement's rows and changed
//! row count, in order, and checks them itself; a database error stops the
//! script and fails the batch.

use futures::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Either, Executor};

use crate::config::Backend;
use crate::error::StoreError;

/// A value bound to a placeholder.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// One statement: SQL with placeholders `$1..$n` (n = `args.len()`), its
/// arguments in order.
#[derive(Debug)]
struct Statement {
    sql: String,
    args: Vec<Arg>,
}

/// What one statement of a script did.
#[derive(Default)]
pub struct Outcome {
    pub rows: Vec<AnyRow>,
    pub rows_affected: u64,
}

/// Statements to send together, in order.
#[derive(Debug, Default)]
pub struct Script {
    statements: Vec<Statement>,
}

impl Script {
    /// Adds a statement; returns its index in the outcomes.
    pub fn push(&mut self, sql: impl Into<String>, args: Vec<Arg>) -> usize {
        self.statements.push(Statement {
            sql: sql.into(),
            args,
        });
        self.statements.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Runs every statement; one outcome per statement, in order.
    pub async fn run(
        self,
        conn: &mut AnyConnection,
        backend: Backend,
    ) -> Result<Vec<Outcome>, StoreError> {
        match backend {
            Backend::Sqlite => self.run_as_one(conn).await,
            Backend::Postgres => {
                let mut outcomes = Vec::with_capacity(self.statements.len());
                for statement in self.statements {
                    let mut one = run(conn, &statement.sql, statement.args, 1).await?;
                    outcomes.push(one.pop().expect("one statement gives one outcome"));
                }
                Ok(outcomes)
            }
        }
    }

    async fn run_as_one(self, conn: &mut AnyConnection) -> Result<Vec<Outcome>, StoreError> {
        let count = self.statements.len();
        let mut sql = String::new();
        let mut args = Vec::new();
        for statement in self.statements {
            sql.push_str(&renumber(&statement.sql, args.len()));
            sql.push_str(";\n");
            args.extend(statement.args);
        }
        run(conn, &sql, args, count).await
    }
}

/// Runs `sql` (`count` statements) and collects each statement's outcome.
async fn run(
    conn: &mut AnyConnection,
    sql: &str,
    args: Vec<Arg>,
    count: usize,
) -> Result<Vec<Outcome>, StoreError> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
        };
    }
    let mut outcomes = Vec::with_capacity(count);
    let mut current = Outcome::default();
    // sqlx-sqlite runs every statement of a query string, binding `$N` by
    // number across them (sqlx calls this behaviour deprecated, in favour of
    // argument-less `raw_sql`); the outcome count below fails loudly if a
    // future sqlx stops doing so.
    let mut stream = conn.fetch_many(query);
    while let Some(item) = stream.try_next().await? {
        match item {
            Either::Right(row) => current.rows.push(row),
            Either::Left(done) => {
                current.rows_affected = done.rows_affected();
                outcomes.push(std::mem::take(&mut current));
            }
        }
    }
    if outcomes.len() != count {
        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "a script of {count} statements reported {} outcomes",
            outcomes.len()
        ))));
    }
    Ok(outcomes)
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

//! The connection a batch's statements run on. PostgreSQL batches, and every
//! read outside a batch, use sqlx. A SQLite batch runs on its writer lane's
//! own thread (`lane.rs`) over a rusqlite connection: with sqlx, each
//! statement of a batch was a round trip to the connection's worker thread
//! and back (100–170 µs each at one client, three per batch); on the lane
//! the whole batch is one.
//!
//! Statements are written once for both: `$N` placeholders bound by number,
//! and rows read as a list of typed columns (`Col`, `Val`).

use sqlx::{AnyConnection, Row};

use super::script::{bind, Arg};
use crate::error::StoreError;

/// A connection a batch or a read runs on.
pub enum Conn<'c> {
    Sqlx(&'c mut AnyConnection),
    /// SQLite, on the writer lane's thread: its calls never wait for another
    /// thread, so the futures of this module complete when first polled.
    Lite(&'c mut rusqlite::Connection),
}

/// The type a query's column is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Int,
    Text,
}

/// One value of a row read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    /// A text that must not be NULL.
    pub fn text(self) -> Result<String, StoreError> {
        match self {
            Val::Text(text) => Ok(text),
            other => Err(unexpected("a text", &other)),
        }
    }

    pub fn opt_text(self) -> Result<Option<String>, StoreError> {
        match self {
            Val::Null => Ok(None),
            Val::Text(text) => Ok(Some(text)),
            other => Err(unexpected("a text or NULL", &other)),
        }
    }

    pub fn int(&self) -> Result<i64, StoreError> {
        match self {
            Val::Int(int) => Ok(*int),
            other => Err(unexpected("an integer", other)),
        }
    }
}

fn unexpected(wanted: &str, got: &Val) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "a column read as {wanted} holds {got:?}"
    )))
}

impl Conn<'_> {
    /// The same connection, borrowed again.
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlx(conn) => Conn::Sqlx(conn),
            Conn::Lite(conn) => Conn::Lite(conn),
        }
    }

    /// Runs one statement; the rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, StoreError> {
        match self {
            Conn::Sqlx(conn) => Ok(bind(sqlx::query(sql), args.to_vec())
                .execute(&mut **conn)
                .await?
                .rows_affected()),
            Conn::Lite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                bind_numbered(&mut statement, args)?;
                Ok(statement.raw_execute()? as u64)
            }
        }
    }

    /// Runs one query; its rows, each column read as `cols` says.
    pub async fn fetch(
        &mut self,
        sql: &str,
        args: &[Arg],
        cols: &[Col],
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        match self {
            Conn::Sqlx(conn) => {
                let rows = bind(sqlx::query(sql), args.to_vec())
                    .fetch_all(&mut **conn)
                    .await?;
                rows.iter()
                    .map(|row| {
                        cols.iter()
                            .enumerate()
                            .map(|(i, col)| {
                                Ok(match col {
                                    Col::Int => row.try_get::<Option<i64>, _>(i)?.map(Val::Int),
                                    Col::Text => {
                                        row.try_get::<Option<String>, _>(i)?.map(Val::Text)
                                    }
                                }
                                .unwrap_or(Val::Null))
                            })
                            .collect()
                    })
                    .collect()
            }
            Conn::Lite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                bind_numbered(&mut statement, args)?;
                let mut rows = statement.raw_query();
                let mut found = Vec::new();
                while let Some(row) = rows.next()? {
                    let values = cols
                        .iter()
                        .enumerate()
                        .map(|(i, col)| {
                            Ok(match col {
                                Col::Int => row.get::<_, Option<i64>>(i)?.map(Val::Int),
                                Col::Text => row.get::<_, Option<String>>(i)?.map(Val::Text),
                            }
                            .unwrap_or(Val::Null))
                        })
                        .collect::<Result<Vec<Val>, StoreError>>()?;
                    found.push(values);
                }
                Ok(found)
            }
        }
    }

    /// Runs one query of at most one row.
    pub async fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg],
        cols: &[Col],
    ) -> Result<Option<Vec<Val>>, StoreError> {
        let mut rows = self.fetch(sql, args, cols).await?;
        if rows.len() > 1 {
            return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                "a query of at most one row returned {}",
                rows.len()
            ))));
        }
        Ok(rows.pop())
    }
}

/// Binds `$N` to `args[N - 1]`. SQLite numbers named parameters by first
/// appearance, so `$2 ... $1` would bind in the wrong order by position.
fn bind_numbered(statement: &mut rusqlite::Statement<'_>, args: &[Arg]) -> Result<(), StoreError> {
    for index in 1..=statement.parameter_count() {
        let name = statement.parameter_name(index).unwrap_or_default();
        let arg = name
            .strip_prefix('$')
            .and_then(|number| number.parse::<usize>().ok())
            .and_then(|number| args.get(number.checked_sub(1)?))
            .ok_or_else(|| {
                StoreError::Database(sqlx::Error::Protocol(format!(
                    "placeholder {name:?} has no argument ({} given)",
                    args.len()
                )))
            })?;
        match arg {
            Arg::Text(text) => statement.raw_bind_parameter(index, text.as_str())?,
            Arg::Int(int) => statement.raw_bind_parameter(index, *int)?,
        }
    }
    Ok(())
}

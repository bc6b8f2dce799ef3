//! One fresh MariaDB database per test, dropped when the test ends.

use std::sync::atomic::{AtomicU32, Ordering};

use mysql::prelude::Queryable;

/// The server the tests use; `VALHALLA_TEST_MYSQL` overrides it.
pub fn admin_url() -> String {
    std::env::var("VALHALLA_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn admin_conn() -> mysql::Conn {
    let url = admin_url();
    let opts = mysql::Opts::from_url(&url).expect("VALHALLA_TEST_MYSQL is a mysql:// URL");
    mysql::Conn::new(opts).unwrap_or_else(|error| {
        panic!("the tests need MariaDB at {url} (start it, or set VALHALLA_TEST_MYSQL): {error}")
    })
}

/// A database that exists for the life of this value.
pub struct TestDb {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl TestDb {
    pub fn create(label: &str) -> TestDb {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("vt_{label}_{}_{n}", std::process::id());
        let mut conn = admin_conn();
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .unwrap();
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .unwrap();
        let opts = mysql::Opts::from_url(&admin_url()).unwrap();
        TestDb {
            name,
            host: opts.get_ip_or_hostname().to_string(),
            port: opts.get_tcp_port(),
            user: opts.get_user().unwrap_or("root").to_string(),
            password: opts.get_pass().unwrap_or("").to_string(),
        }
    }

    pub fn conn(&self) -> mysql::Conn {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some(self.host.clone()))
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .db_name(Some(self.name.clone()))
            .init(vec!["SET time_zone = '+00:00'"]);
        mysql::Conn::new(opts).expect("connect to the test database")
    }

    /// The MYSQL_* variables that point the server at this database.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("MYSQL_HOST".into(), self.host.clone()),
            ("MYSQL_PORT".into(), self.port.to_string()),
            ("MYSQL_USER".into(), self.user.clone()),
            ("MYSQL_PASSWORD".into(), self.password.clone()),
            ("MYSQL_DATABASE".into(), self.name.clone()),
        ]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(opts) = mysql::Opts::from_url(&admin_url())
            && let Ok(mut conn) = mysql::Conn::new(opts)
        {
            let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

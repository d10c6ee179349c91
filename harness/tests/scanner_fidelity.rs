//! The fidelity table sent to the scanner this run grades, in its own image, under each of the
//! table's five configs: the report gets the agreement per config and field (`fidelity.md`),
//! and the test fails on any row that answers otherwise than the recorded pipelock did. With
//! real pipelock that is the news a pipelock bump must bring: the double no longer models it
//! (re-record the table, fixtures/pipelock-double/README.md); with the double, that the image
//! the bottles run answers as the table says.

use bottle_harness::report::Report;
use bottle_harness::{images, scanner_fidelity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graded_scanner_answers_the_fidelity_table_as_pipelock_did() {
    let docker = bottle::docker::connect().await.expect("Docker");
    let images = images::ensure(&docker).await.expect("the test images");
    let fidelity = scanner_fidelity::measure(&docker, &images)
        .await
        .expect("the table was sent under every config");
    Report::from_env()
        .write_fidelity(&fidelity)
        .expect("the report takes the fidelity section");
    eprintln!("{}", fidelity.markdown());
    let table = pipelock_double::fidelity::Table::load(&scanner_fidelity::table_dir()).unwrap();
    assert_eq!(fidelity.configs.len(), 5);
    for config in &fidelity.configs {
        assert_eq!(
            config.rows,
            table.rows.len(),
            "{}: every row was compared",
            config.config
        );
    }
    assert!(
        fidelity.agrees(),
        "{} answers otherwise than the recorded pipelock:\n{}",
        fidelity.scanner,
        fidelity.markdown()
    );
}

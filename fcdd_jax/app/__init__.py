"""The command line and the process: `--config` resolution and `--help` (cli), allocator re-exec, logging,
distributed start-up and exception -> one line + exit code (process; the codes are defined once in
`utils/errors`, the serving commands' one-line messages in `serving/messages`). Used only by the entry
modules at the package's top."""

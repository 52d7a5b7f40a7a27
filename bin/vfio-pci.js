#!/usr/bin/env node
'use strict';
// The exit status is set, not forced with process.exit(): output still buffered for a pipe is
// flushed, and a job's cleanup has already run when main() resolves.
require('../dist/src/cli/main.js')
  .main(process.argv.slice(2))
  .then((code) => {
    process.exitCode = code;
  });

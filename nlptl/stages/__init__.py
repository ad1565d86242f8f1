"""One module per command: `nlptl <stage>` is `nlptl.stages.<stage>.run(config)`."""

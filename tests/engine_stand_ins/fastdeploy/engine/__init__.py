"""Stand-in (see ../../README.md): the one FastDeploy submodule batchmagic's worker imports."""

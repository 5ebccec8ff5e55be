"""The label-efficiency benchmark (the CLI's ``polmap benchmark`` and ``benchmarks/``)."""

"""The coreml target: converter, options, runner, graph inspector (registered in ``export.config``)."""

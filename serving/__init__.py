"""The server (installed as ``tailorrt.serving``): ``create_app(runtime, config)`` in :mod:`tailorrt.serving.app`
(HTTP, and gRPC beside it from :mod:`tailorrt.serving.grpc_server`), both over :mod:`tailorrt.serving.service`."""

from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The HTTP face: the trigger.dev v4 wire format's views, routes, OpenAPI document and error middleware."""

    name = "api"

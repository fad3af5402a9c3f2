"""Desired state, status and run history as SQLModel tables: the bottom layer, importing nothing above it."""

from models.app import App
from models.base import Resource, metadata
from models.change import Change
from models.dependency import Dependency
from models.event import Event, PendingEvent
from models.file import File
from models.http_object import HTTPObject, HTTPObjectLocation
from models.mysql import MySQLDatabase, MySQLGrant, MySQLUser
from models.node import Node
from models.policy import Policy
from models.postgres import PostgresDatabase, PostgresGrant, PostgresRole
from models.run import Run
from models.secret import Secret
from models.status import Status
from models.webhook import Delivery, Webhook
from models.workload import Workload

__all__ = [
    "App",
    "Change",
    "Delivery",
    "Dependency",
    "Event",
    "File",
    "MySQLDatabase",
    "MySQLGrant",
    "MySQLUser",
    "HTTPObject",
    "HTTPObjectLocation",
    "Node",
    "PendingEvent",
    "Policy",
    "PostgresDatabase",
    "PostgresGrant",
    "PostgresRole",
    "Resource",
    "Run",
    "Secret",
    "Status",
    "Webhook",
    "Workload",
    "metadata",
]

"""The orders service: POST /orders writes the order and its event in one transaction.

    uvicorn --factory outboxkit.examples.orders.service:app_from_env   # ORDERS_DATABASE_URL=postgresql+psycopg://…

Copy what you need: the only outboxkit line is `await outbox.awrite(session, …)`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import DateTime, String, func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outboxkit import outbox


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(200))
    total_cents: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class NewOrder(BaseModel):
    customer: str = Field(min_length=1, max_length=200)
    total_cents: int = Field(gt=0)


class PlacedOrder(BaseModel):
    id: int
    event_id: str


def create_app(database_url: str) -> FastAPI:
    """The orders API on `database_url` (postgresql+psycopg://…)."""
    engine = create_async_engine(database_url, pool_size=10)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(title="orders", lifespan=lifespan)
    app.state.engine = engine

    @app.post("/orders", status_code=201)
    async def place_order(order: NewOrder) -> PlacedOrder:
        async with sessions() as session, session.begin():
            row = Order(customer=order.customer, total_cents=order.total_cents)
            session.add(row)
            await session.flush()  # the database assigns the id
            event = await outbox.awrite(
                session,
                "order.created",
                {"order_id": row.id, "customer": row.customer, "total_cents": row.total_cents},
                key=f"order-{row.id}",
            )
        # committed: the order and its event, or neither
        return PlacedOrder(id=row.id, event_id=str(event.message_id))

    return app


async def create_schema(engine: AsyncEngine) -> None:
    """Create the orders table (a real service would use its own migrations)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


def app_from_env() -> FastAPI:
    """For `uvicorn --factory`: the database URL from ORDERS_DATABASE_URL."""
    return create_app(os.environ["ORDERS_DATABASE_URL"])

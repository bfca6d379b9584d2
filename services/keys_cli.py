"""`gradecast keys create|list|revoke`."""

import argparse
import re

from services.core.db import create_engine
from services.core.keys import create_key, list_keys, revoke_key
from services.core.settings import Settings

TENANT = re.compile(r"[A-Za-z0-9._:@-]{1,64}")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    engine = create_engine(settings, "gradecast-keys")
    try:
        if args.action == "create":
            if not TENANT.fullmatch(args.tenant):
                print(f"gradecast: not a valid tenant id: {args.tenant!r}")
                return 2
            key_id, key = await create_key(engine, args.tenant, args.name)
            print(f"created key {key_id} for {args.name!r} (tenant {args.tenant}):\n{key}")
            print("It is shown only now: store it in the gradebook's configuration.")
        elif args.action == "list":
            rows = await list_keys(engine)
            print(f"{'id':>4}  {'tenant':<16}{'name':<28}{'prefix':<14}{'created':<21}revoked")
            for row in rows:
                revoked = f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "-"
                print(
                    f"{row.id:>4}  {row.tenant_id:<16}{row.name[:27]:<28}{row.prefix:<14}"
                    f"{row.created_at:%Y-%m-%d %H:%M}     {revoked}"
                )
        elif not await revoke_key(engine, args.key_id):
            print(f"gradecast: no active key {args.key_id}")
            return 1
        else:
            print(f"revoked key {args.key_id}; publishers refuse it within seconds")
        return 0
    finally:
        await engine.dispose()

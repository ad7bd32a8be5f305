// Every signed-in page: one taskcast connection for the tab, kept while the
// user moves between pages.
import Link from "next/link";
import type { ReactNode } from "react";
import { requireUser } from "@/lib/auth";
import { taskcastPublicUrl } from "@/lib/taskcast";
import { ConnectionBadge } from "@/components/connection-badge";
import { Realtime } from "@/components/realtime";
import { SignOut } from "@/components/sign-out";

export default async function AppLayout({ children }: { children: ReactNode }) {
  const me = await requireUser();
  return (
    <Realtime url={taskcastPublicUrl()}>
      <header>
        <Link href="/">Projects</Link>
        <ConnectionBadge />
        <span className="me" data-testid="me">
          {me.name}
        </span>
        <SignOut />
      </header>
      <main>{children}</main>
    </Realtime>
  );
}

"""A minimal org.kde.StatusNotifierWatcher for the app tests.

Desktop panels (KDE, GNOME's AppIndicator extension, …) own this D-Bus name
and show the tray icons that register with it. Under Xvfb there is no panel,
so a tray icon has nowhere to register; this stand-in accepts registrations
and lists them in RegisteredStatusNotifierItems, which is what the test
reads. Run with Debian's python3 (python3-dbus, python3-gi).
"""

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = "org.kde.StatusNotifierWatcher"


class Watcher(dbus.service.Object):
    def __init__(self, bus):
        self.items = []
        name = dbus.service.BusName(IFACE, bus)
        super().__init__(name, "/StatusNotifierWatcher")

    @dbus.service.method(IFACE, in_signature="s", sender_keyword="sender")
    def RegisterStatusNotifierItem(self, service, sender=None):
        # Items pass either their bus name or an object path on their connection.
        item = f"{sender}{service}" if service.startswith("/") else service
        if item not in self.items:
            self.items.append(item)
            self.StatusNotifierItemRegistered(item)

    @dbus.service.method(IFACE, in_signature="s")
    def RegisterStatusNotifierHost(self, service):
        pass

    @dbus.service.signal(IFACE, signature="s")
    def StatusNotifierItemRegistered(self, item):
        pass

    @dbus.service.signal(IFACE, signature="")
    def StatusNotifierHostRegistered(self):
        pass

    def props(self):
        return {
            "RegisteredStatusNotifierItems": dbus.Array(self.items, signature="s"),
            "IsStatusNotifierHostRegistered": dbus.Boolean(True),
            "ProtocolVersion": dbus.Int32(0),
        }

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="ss", out_signature="v")
    def Get(self, interface, prop):
        return self.props()[prop]

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        return self.props()


if __name__ == "__main__":
    DBusGMainLoop(set_as_default=True)
    watcher = Watcher(dbus.SessionBus())
    print("watcher ready", flush=True)
    GLib.MainLoop().run()

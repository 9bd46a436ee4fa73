// Command centrifuge-chat is bench/run.sh's Centrifuge peer: chat rooms as Centrifuge
// channels on one node with the in-memory broker and presence manager, on 127.0.0.1.
//
// A client connects anonymously over the JSON protocol (its connect name is its user
// name), subscribes to the room's channel (presence on) and publishes into it; every
// subscriber, the publisher included, receives each publication, and each channel keeps
// its last 100 publications (the history edgechat and the demo replay on join).
//
//	centrifuge-chat -listen 127.0.0.1:18788
//
// Built offline from Debian's golang-github-centrifugal-centrifuge-dev (see build.sh).
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"
)

// historySize is the number of publications each channel keeps, as edgechat's history.
const historySize = 100

// historyTTL keeps a channel's history for longer than any benchmark run.
const historyTTL = time.Hour

func main() {
	listen := flag.String("listen", "127.0.0.1:18788", "address to serve WebSockets on (/connection/websocket)")
	flag.Parse()

	cfg := centrifuge.DefaultConfig
	cfg.LogLevel = centrifuge.LogLevelError
	cfg.LogHandler = func(e centrifuge.LogEntry) { log.Printf("%s: %v", e.Message, e.Fields) }
	node, err := centrifuge.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	// The default broker and presence manager are the in-memory ones; set explicitly so
	// that a change of defaults cannot move the benchmark to another engine.
	broker, err := centrifuge.NewMemoryBroker(node, centrifuge.MemoryBrokerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	node.SetBroker(broker)
	presence, err := centrifuge.NewMemoryPresenceManager(node, centrifuge.MemoryPresenceManagerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	node.SetPresenceManager(presence)

	// Anonymous: the connect command's name is the user.
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{UserID: e.Name}}, nil
	})
	node.OnConnect(func(client *centrifuge.Client) {
		client.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{Options: centrifuge.SubscribeOptions{Presence: true}}, nil)
		})
		client.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			if !client.IsSubscribed(e.Channel) {
				cb(centrifuge.PublishReply{}, centrifuge.ErrorPermissionDenied)
				return
			}
			result, err := node.Publish(e.Channel, e.Data, centrifuge.WithHistory(historySize, historyTTL))
			cb(centrifuge.PublishReply{Result: &result}, err)
		})
		// A member may ask who is in the room and for its last messages (what edgechat
		// and the demo send on join); the generator does not ask.
		client.OnPresence(func(e centrifuge.PresenceEvent, cb centrifuge.PresenceCallback) {
			if !client.IsSubscribed(e.Channel) {
				cb(centrifuge.PresenceReply{}, centrifuge.ErrorPermissionDenied)
				return
			}
			cb(centrifuge.PresenceReply{}, nil)
		})
		client.OnHistory(func(e centrifuge.HistoryEvent, cb centrifuge.HistoryCallback) {
			if !client.IsSubscribed(e.Channel) {
				cb(centrifuge.HistoryReply{}, centrifuge.ErrorPermissionDenied)
				return
			}
			cb(centrifuge.HistoryReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.Handle("/connection/websocket", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	server := &http.Server{Addr: *listen, Handler: mux}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
		<-stop
		_ = server.Close()
		_ = node.Shutdown(context.Background())
	}()
	log.Printf("listening on %s", *listen)
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
